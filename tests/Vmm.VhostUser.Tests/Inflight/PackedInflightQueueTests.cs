using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Core.Memory;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Inflight;

namespace Vmm.VhostUser.Tests.Inflight;

/// <summary>vhost-user.rst, "Inflight I/O tracking", packed virtqueue.</summary>
[TestFixture]
public sealed class PackedInflightQueueTests
{
    private const ushort QueueSize = 8;
    private const ulong Features = VirtioFeatures.VERSION_1 | VirtioFeatures.RING_PACKED | VirtioFeatures.RING_INDIRECT_DESC;
    private static readonly VirtqueueState Fresh = new(0, 0, true, true);

    [Test]
    public void A_new_region_is_initialised_at_the_requested_state_and_resubmits_nothing()
    {
        using InflightRegion region = InflightRegion.Create(1, QueueSize);
        using GuestMemory memory = GuestMemory.Create(1 << 20);
        var requested = new VirtqueueState(5, 3, false, true);

        (IReadOnlyList<PackedResubmitChain> chains, VirtqueueState state) = region.PackedQueue(0).Recover(memory, 0x1000, requested);

        Assert.That(chains, Is.Empty);
        Assert.That(state, Is.EqualTo(requested));
        Assert.That(region.MmapSize, Is.GreaterThanOrEqualTo(PackedInflightQueue.RegionBytes(QueueSize)), "sized for the packed layout");
    }

    [Test]
    public void Chains_taken_but_not_returned_are_resubmitted_in_order_even_after_their_slots_were_reused()
    {
        using var bed = new Bed();
        PackedInflightQueue tracker = bed.Region.PackedQueue(0);
        tracker.Recover(bed.Memory, bed.Driver.Params.DescriptorArea, Fresh);

        // Five requests; the third is a two-descriptor chain, the fourth a three-descriptor one.
        bed.Submit(0, 1);
        bed.Submit(1, 1);
        bed.Submit(2, 2);
        bed.Submit(3, 3);
        bed.Submit(4, 1);

        var first = new PackedDeviceQueue(bed.Resources, Features, null, tracker);
        var taken = new List<DescriptorChain>();
        while (first.TryPop(out DescriptorChain chain))
        {
            taken.Add(chain);
        }

        Assert.That(taken, Has.Count.EqualTo(5));

        // It returns the second and the fourth (their used descriptors overwrite the first two
        // ring slots, which held requests 0 and 1), then dies.
        first.Complete(taken[1], 0);
        first.Complete(taken[3], 0);
        Assert.That(tracker.CountInflight(), Is.EqualTo(3));

        // A new back-end maps the same region.
        (IReadOnlyList<PackedResubmitChain> resubmit, VirtqueueState state) = tracker.Recover(bed.Memory, bed.Driver.Params.DescriptorArea, Fresh);
        Assert.That(resubmit.Select(c => c.Descriptors[^1].Id), Is.EqualTo(new[] { taken[0].Head, taken[2].Head, taken[4].Head }));
        Assert.That(resubmit[1].Descriptors, Has.Count.EqualTo(2), "both descriptors of the chain kept");
        Assert.That(state, Is.EqualTo(first.GetState()), "the region knows where the ring stood");

        var second = new PackedDeviceQueue(bed.Resources with { ResubmitPacked = resubmit }, Features, state, tracker);
        var again = new List<DescriptorChain>();
        while (second.TryPop(out DescriptorChain chain))
        {
            again.Add(chain);
        }

        Assert.That(again.Select(c => c.Segments.Count), Is.EqualTo(new[] { 1, 2, 1 }), "chains rebuilt from the region");
        foreach (DescriptorChain chain in again)
        {
            second.Complete(chain, 0);
        }

        Assert.That(bed.TakeUsedTokens().Order(), Is.EqualTo(new[] { 0, 1, 2, 3, 4 }), "every request completed exactly once");
        Assert.That(tracker.CountInflight(), Is.Zero);

        // And the ring goes on: the next request after recovery is served normally.
        bed.Submit(5, 1);
        Assert.That(second.TryPop(out DescriptorChain next), Is.True);
        second.Complete(next, 0);
        Assert.That(bed.TakeUsedTokens(), Is.EqualTo(new[] { 5 }));
        Assert.That(tracker.Recover(bed.Memory, bed.Driver.Params.DescriptorArea, Fresh).Resubmit, Is.Empty);
    }

    [Test]
    public void An_indirect_chain_is_kept_as_its_one_ring_descriptor_and_read_again_from_its_table()
    {
        using var bed = new Bed(indirect: true);
        PackedInflightQueue tracker = bed.Region.PackedQueue(0);
        tracker.Recover(bed.Memory, bed.Driver.Params.DescriptorArea, Fresh);
        bed.Submit(7, 3);
        var first = new PackedDeviceQueue(bed.Resources, Features, null, tracker);
        Assert.That(first.TryPop(out DescriptorChain taken), Is.True);
        Assert.That(taken.RingSlots, Is.EqualTo(1));

        (IReadOnlyList<PackedResubmitChain> resubmit, VirtqueueState state) = tracker.Recover(bed.Memory, bed.Driver.Params.DescriptorArea, Fresh);
        Assert.That(resubmit, Has.Count.EqualTo(1));
        Assert.That(resubmit[0].Descriptors[0].Flags & VirtqueueLayout.VIRTQ_DESC_F_INDIRECT, Is.Not.Zero);

        var second = new PackedDeviceQueue(bed.Resources with { ResubmitPacked = resubmit }, Features, state, tracker);
        Assert.That(second.TryPop(out DescriptorChain again), Is.True);
        Assert.That(again.Segments, Is.EqualTo(taken.Segments));
        second.Complete(again, 0);
        Assert.That(bed.TakeUsedTokens(), Is.EqualTo(new[] { 7 }));
    }

    [Test]
    public void A_crash_after_publishing_a_used_descriptor_commits_it()
    {
        using var bed = new Bed();
        PackedInflightQueue tracker = bed.Region.PackedQueue(0);
        tracker.Recover(bed.Memory, bed.Driver.Params.DescriptorArea, Fresh);
        bed.Submit(0, 1);
        bed.Submit(1, 1);
        var device = new PackedDeviceQueue(bed.Resources, Features, null, new CrashBeforeCommit(tracker));
        Assert.That(device.TryPop(out DescriptorChain a), Is.True);
        Assert.That(device.TryPop(out DescriptorChain b), Is.True);

        // b's used descriptor is published, but the back-end dies before the region commits it.
        device.Complete(b, 0);

        (IReadOnlyList<PackedResubmitChain> resubmit, VirtqueueState state) = tracker.Recover(bed.Memory, bed.Driver.Params.DescriptorArea, Fresh);
        Assert.That(resubmit.Select(c => c.Descriptors[^1].Id), Is.EqualTo(new[] { a.Head }));
        Assert.That(state, Is.EqualTo(device.GetState()));
    }

    [Test]
    public void A_crash_before_publishing_rolls_the_update_back()
    {
        using var bed = new Bed();
        PackedInflightQueue tracker = bed.Region.PackedQueue(0);
        tracker.Recover(bed.Memory, bed.Driver.Params.DescriptorArea, Fresh);
        bed.Submit(0, 1);
        var device = new PackedDeviceQueue(bed.Resources, Features, null, tracker);
        Assert.That(device.TryPop(out DescriptorChain a), Is.True);
        VirtqueueState before = device.GetState();

        // The region was told the chain is being returned; its used descriptor never reached the ring.
        tracker.OnCompleting(a.Head);

        (IReadOnlyList<PackedResubmitChain> resubmit, VirtqueueState state) = tracker.Recover(bed.Memory, bed.Driver.Params.DescriptorArea, Fresh);
        Assert.That(resubmit.Select(c => c.Descriptors[^1].Id), Is.EqualTo(new[] { a.Head }));
        Assert.That(state, Is.EqualTo(before));
    }

    [Test]
    public void A_region_with_a_corrupt_entry_is_refused()
    {
        using var bed = new Bed();
        PackedInflightQueue tracker = bed.Region.PackedQueue(0);
        tracker.Recover(bed.Memory, bed.Driver.Params.DescriptorArea, Fresh);
        bed.Submit(0, 1);
        var device = new PackedDeviceQueue(bed.Resources, Features, null, tracker);
        Assert.That(device.TryPop(out _), Is.True);

        // desc[0].num := 200, more descriptors than the ring has.
        unsafe
        {
            using var map = Vmm.Core.Posix.SharedMapping.Map(bed.Region.Fd, 0, bed.Region.MmapSize);
            *(ushort*)(map.Address + PackedInflightQueue.HeaderSize + 6) = 200;
        }

        Assert.That(() => tracker.Recover(bed.Memory, bed.Driver.Params.DescriptorArea, Fresh), Throws.InstanceOf<InvalidDataException>());
    }

    /// <summary>Forwards everything but the commit of a completion, as if the back-end died there.</summary>
    private sealed class CrashBeforeCommit(PackedInflightQueue inner) : IPackedInflightTracker
    {
        public void OnPopped(ushort head)
        {
        }

        public void OnPopped(ReadOnlySpan<PackedRingDescriptor> descriptors) => inner.OnPopped(descriptors);

        public void OnCompleting(ushort head) => inner.OnCompleting(head);

        public void OnCompleted(ushort head)
        {
        }
    }

    private sealed class Bed : IDisposable
    {
        private readonly GuestMemoryAllocator _allocator;
        private readonly EventFd _kick = new();

        public Bed(bool indirect = false)
        {
            Memory = GuestMemory.Create(1 << 20);
            _allocator = new GuestMemoryAllocator(0x1000, (1 << 20) - 0x1000);
            Driver = DriverQueue.Create(Memory, _allocator, QueueSize, indirect ? Features : Features & ~VirtioFeatures.RING_INDIRECT_DESC);
            Region = InflightRegion.Create(1, QueueSize);
            Resources = new VirtqueueResources(Driver.Params, Memory, _kick, new FunctionBackedInterruptLine(0, _ => { }));
        }

        public GuestMemory Memory { get; }

        public IDriverQueue Driver { get; }

        public InflightRegion Region { get; }

        public VirtqueueResources Resources { get; }

        public void Submit(int token, int buffers)
        {
            var list = new DriverBuffer[buffers];
            for (int i = 0; i < buffers; i++)
            {
                list[i] = new DriverBuffer(_allocator.Allocate(16), 16, i == buffers - 1);
            }

            Assert.That(Driver.TrySubmit(list, token), Is.True);
        }

        public List<int> TakeUsedTokens()
        {
            var tokens = new List<int>();
            while (Driver.TryTakeUsed(out object? token, out _))
            {
                tokens.Add((int)token!);
            }

            return tokens;
        }

        public void Dispose()
        {
            Region.Dispose();
            _kick.Dispose();
            Memory.Dispose();
        }
    }
}
