using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Core.Memory;
using Vmm.Virtio.Queues;

namespace Vmm.VhostUser.Tests.Frontend;

/// <summary>Guest memory with one split ring at 0x1000/0x2000/0x3000 (64 entries), its kick eventfd and an interrupt line.</summary>
internal sealed class TestRing : IDisposable
{
    /// <param name="line">The queue's line; a function-backed line that raises nothing by default.</param>
    public TestRing(InterruptLine? line = null)
    {
        Memory = GuestMemory.Create(1 << 20);
        Kick = new EventFd();
        Resources = new VirtqueueResources(
            new VirtqueueParams(64, 0x1000, 0x2000, 0x3000), Memory, Kick, line ?? new FunctionBackedInterruptLine(0, _ => { }));
    }

    public GuestMemory Memory { get; }

    public EventFd Kick { get; }

    public VirtqueueResources Resources { get; }

    /// <summary>Publishes <paramref name="index"/> as the used index the guest sees (offset 2 of the device area).</summary>
    public void SetUsedIndex(ushort index) => Memory.WriteUInt16(0x3000 + 2, index);

    public void Dispose()
    {
        Kick.Dispose();
        Memory.Dispose();
    }
}
