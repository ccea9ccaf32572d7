using Vmm.Core.Interrupts;
using Vmm.Virtio.Queues;

namespace Vmm.Virtio.Driver;

/// <summary>
/// The guest driver's view of one transport: register reads and writes on the bus, nothing
/// else (what Linux's virtio_config_ops over virtio_mmio / virtio_pci_modern provide).
/// </summary>
internal interface IDriverTransport
{
    string Name { get; }

    byte ReadStatus();

    void WriteStatus(byte status);

    ulong ReadDeviceFeatures();

    void WriteDriverFeatures(ulong features);

    /// <summary>How many queues the device has.</summary>
    int QueueCount { get; }

    /// <summary>Largest size of queue <paramref name="index"/>; 0 when it is not available.</summary>
    ushort ReadQueueMaxSize(int index);

    /// <summary>
    /// Programs queue <paramref name="index"/>'s size and areas (and MSI-X vector when
    /// <paramref name="vector"/> is not null) and enables it. Returns the vector the device took, or null.
    /// </summary>
    ushort? SetupQueue(int index, VirtqueueParams queue, ushort? vector);

    bool IsQueueReady(int index);

    void Notify(int index);

    uint ReadConfigGeneration();

    void ReadConfig(uint offset, Span<byte> data);

    void WriteConfig(uint offset, ReadOnlySpan<byte> data);

    /// <summary>MSI-X table entries the function has; 0 when it has no MSI-X (virtio-mmio, a PCI function without the capability).</summary>
    int MsixTableSize { get; }

    /// <summary>
    /// Enables MSI-X and programs entries 0 to <c>messages.Count - 1</c> with
    /// <paramref name="messages"/>, in Linux's order (msix_capability_init): enable with the
    /// function masked, mask every entry, write each message, clear the function mask. The
    /// entries stay masked until <see cref="MaskMsixEntry"/> unmasks them (Linux: request_irq).
    /// </summary>
    void EnableMsix(IReadOnlyList<MsiMessage> messages);

    /// <summary>Masks every entry and clears MSI-X Enable (Linux's pci_msix_shutdown); the function falls back to its INTx.</summary>
    void DisableMsix();

    /// <summary>Sets or clears entry <paramref name="entry"/>'s mask bit (PCI 3.0 §6.8.2.9).</summary>
    void MaskMsixEntry(int entry, bool masked);

    /// <summary>Sets or clears the MSI-X function mask (PCI 3.0 §6.8.2.3).</summary>
    void MaskMsixFunction(bool masked);

    /// <summary>Maps configuration changes to MSI-X entry <paramref name="entry"/>; throws when the device refuses (4.1.5.1.2.2).</summary>
    void SetConfigMsixVector(ushort entry);

    /// <summary>The shared interrupt's number, used without MSI-X; -1 when the function has none.</summary>
    int SharedIrq { get; }

    /// <summary>Reads and acknowledges the interrupt reasons: bit 0 used buffer, bit 1 configuration change.</summary>
    uint ReadAndAckInterruptStatus();
}
