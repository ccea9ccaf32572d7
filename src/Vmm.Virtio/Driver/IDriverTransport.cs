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

    /// <summary>
    /// Enables per-vector interrupts when the transport has them (PCI MSI-X): the config vector is
    /// programmed and the vector numbers returned (index 0 config, then queues). Null: one
    /// shared interrupt whose reason is in the interrupt status (<see cref="ReadAndAckInterruptStatus"/>).
    /// </summary>
    IReadOnlyList<int>? SetupVectors(int queueCount);

    /// <summary>The shared interrupt's number when <see cref="SetupVectors"/> returned null.</summary>
    int SharedIrq { get; }

    /// <summary>Reads and acknowledges the interrupt reasons: bit 0 used buffer, bit 1 configuration change.</summary>
    uint ReadAndAckInterruptStatus();
}
