using NUnit.Framework;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Tests.Queues;

[TestFixture]
public sealed class QueueContractTests
{
    [TestCase(false)]
    [TestCase(true)]
    public void Inflight_tracker_sees_every_pop_and_completion(bool packed)
    {
        using QueueHarness h = QueueHarness.Create(packed, 8);
        var tracker = new RecordingTracker();
        IDeviceQueue device = DeviceQueue.Create(h.Resources, h.Features, null, tracker);
        for (int i = 0; i < 3; i++)
        {
            h.Driver.TrySubmit(h.Request((uint)i), i);
        }

        var heads = new List<ushort>();
        while (device.TryPop(out DescriptorChain c))
        {
            heads.Add(c.Head);
            Assert.That(tracker.Popped, Has.Member(c.Head));
            Assert.That(tracker.Completed, Has.No.Member(c.Head));
            device.Complete(c, 0);
            Assert.That(tracker.Completed, Has.Member(c.Head));
        }

        Assert.That(tracker.Popped, Is.EqualTo(heads));
        Assert.That(tracker.Completed, Is.EqualTo(heads));
    }

    [TestCase(false)]
    [TestCase(true)]
    public void Create_picks_the_layout_from_the_features(bool packed)
    {
        using QueueHarness h = QueueHarness.Create(packed, 8);
        Assert.That(h.Device, packed ? Is.InstanceOf<PackedDeviceQueue>() : Is.InstanceOf<SplitDeviceQueue>());
        Assert.That(h.Driver, packed ? Is.InstanceOf<PackedDriverQueue>() : Is.InstanceOf<SplitDriverQueue>());
        Assert.That(h.Device.Size, Is.EqualTo(8));
        Assert.That(h.Device.GetState(), Is.EqualTo(new VirtqueueState(0, 0)));
    }

    [TestCase(false)]
    [TestCase(true)]
    public void Driver_rejects_empty_misordered_and_over_long_chains(bool packed)
    {
        using QueueHarness h = QueueHarness.Create(packed, 4, VirtioFeatures.RING_INDIRECT_DESC);
        DriverBuffer r = new(0x8000, 16, false);
        DriverBuffer w = new(0x9000, 16, true);
        Assert.Throws<ArgumentException>(() => h.Driver.TrySubmit([], 1));
        Assert.Throws<ArgumentException>(() => h.Driver.TrySubmit([w, r], 1));
        Assert.Throws<ArgumentException>(() => h.Driver.TrySubmit([r, r, r, r, w], 1));
        Assert.That(h.Driver.FreeDescriptors, Is.EqualTo(4));
    }

    [Test]
    public void Driver_ring_areas_follow_the_spec_alignment()
    {
        using QueueHarness split = QueueHarness.Create(false, 256);
        using QueueHarness packed = QueueHarness.Create(true, 100);
        Assert.That(split.Driver.Params.DescriptorArea % VirtqueueLayout.SplitDescriptorAlignment, Is.Zero);
        Assert.That(split.Driver.Params.DriverArea % VirtqueueLayout.SplitAvailAlignment, Is.Zero);
        Assert.That(split.Driver.Params.DeviceArea % VirtqueueLayout.SplitUsedAlignment, Is.Zero);
        Assert.That(packed.Driver.Params.DescriptorArea % VirtqueueLayout.PackedDescriptorAlignment, Is.Zero);
        Assert.That(packed.Driver.Params.DriverArea % VirtqueueLayout.PackedDriverEventAlignment, Is.Zero);
        Assert.That(packed.Driver.Params.DeviceArea % VirtqueueLayout.PackedDeviceEventAlignment, Is.Zero);
        Assert.That(VirtqueueLayout.SplitAvailRingSize(256), Is.EqualTo(6 + (2 * 256)));
        Assert.That(VirtqueueLayout.SplitUsedRingSize(256), Is.EqualTo(6 + (8 * 256)));
    }

    private sealed class RecordingTracker : IInflightTracker
    {
        public List<ushort> Popped { get; } = [];

        public List<ushort> Completed { get; } = [];

        public void OnPopped(ushort head) => Popped.Add(head);

        public void OnCompleted(ushort head) => Completed.Add(head);
    }
}
