using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Core.Memory;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Inflight;

namespace Vmm.VhostUser.Tests.Inflight;

[TestFixture]
public sealed class SplitInflightQueueTests
{
    private const ushort QueueSize = 16;

    [Test]
    public void A_new_region_is_initialised_and_resubmits_nothing()
    {
        using InflightRegion region = InflightRegion.Create(2, QueueSize);

        Assert.That(region.MmapSize, Is.EqualTo(2 * InflightRegion.QueueRegionSize(QueueSize)));
        Assert.That(region.Queue(0).Recover(0), Is.Empty);
        Assert.That(region.Queue(1).Recover(7), Is.Empty);
    }

    [Test]
    public void Requests_taken_but_not_returned_are_resubmitted_in_the_order_they_were_taken()
    {
        using GuestMemory memory = GuestMemory.Create(1 << 20);
        var allocator = new GuestMemoryAllocator(0x1000, (1 << 20) - 0x1000);
        var driver = (SplitDriverQueue)DriverQueue.Create(memory, allocator, QueueSize, VirtioFeatures.VERSION_1);
        using InflightRegion region = InflightRegion.Create(1, QueueSize);
        using var kick = new EventFd();
        var line = new FunctionBackedInterruptLine(0, _ => { });
        var resources = new VirtqueueResources(driver.Params, memory, kick, line) { Inflight = region.Queue(0) };

        for (int i = 0; i < 5; i++)
        {
            ulong buffer = allocator.Allocate(16);
            Assert.That(driver.TrySubmit([new DriverBuffer(buffer, 16, false)], i), Is.True);
        }

        // The first back-end takes all five, returns the second and the fourth, then dies.
        var first = new SplitDeviceQueue(resources, VirtioFeatures.VERSION_1, null, region.Queue(0));
        var taken = new List<DescriptorChain>();
        while (first.TryPop(out DescriptorChain chain))
        {
            taken.Add(chain);
        }

        first.Complete(taken[1], 0);
        first.Complete(taken[3], 0);
        Assert.That(region.Queue(0).CountInflight(), Is.EqualTo(3));

        // The next back-end maps the same region and finds the other three, oldest first.
        ushort usedIdx = memory.ReadUInt16(driver.Params.DeviceArea + 2);
        IReadOnlyList<ushort> resubmit = region.Queue(0).Recover(usedIdx);
        Assert.That(resubmit, Is.EqualTo(new[] { taken[0].Head, taken[2].Head, taken[4].Head }));

        var second = new SplitDeviceQueue(
            resources with { Resubmit = resubmit },
            VirtioFeatures.VERSION_1,
            new VirtqueueState(5, usedIdx),
            region.Queue(0));
        while (second.TryPop(out DescriptorChain chain))
        {
            second.Complete(chain, 0);
        }

        var tokens = new List<int>();
        while (driver.TryTakeUsed(out object? token, out _))
        {
            tokens.Add((int)token!);
        }

        Assert.That(tokens.Order(), Is.EqualTo(new[] { 0, 1, 2, 3, 4 }), "every request completed exactly once");
        Assert.That(region.Queue(0).CountInflight(), Is.Zero);
    }

    [Test]
    public void A_crash_after_publishing_a_used_entry_does_not_resubmit_it()
    {
        using InflightRegion region = InflightRegion.Create(1, QueueSize);
        SplitInflightQueue queue = region.Queue(0);
        Assert.That(queue.Recover(0), Is.Empty);

        queue.OnPopped(3);
        queue.OnPopped(9);

        // Head 9 was written to the used ring and idx moved to 1, but the back-end died before
        // clearing its inflight flag (between OnCompleting and OnCompleted).
        queue.OnCompleting(9);

        Assert.That(queue.Recover(usedRingIndex: 1), Is.EqualTo(new ushort[] { 3 }));
    }

    [Test]
    public void A_region_too_small_for_its_queues_is_refused()
    {
        using InflightRegion real = InflightRegion.Create(1, QueueSize);
        var dup = new Vmm.Core.Posix.SafeFileDescriptor(Mono.Unix.Native.Syscall.dup((int)real.Fd.DangerousGetHandle()));

        Assert.That(() => InflightRegion.Open(dup, real.MmapSize, 0, 4, QueueSize, Vmm.Core.Memory.UnsealedMemoryPolicy.Refuse, () => { }), Throws.ArgumentException);
        Assert.That(dup.IsClosed, Is.True);
    }
}
