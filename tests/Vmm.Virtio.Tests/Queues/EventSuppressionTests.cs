using NUnit.Framework;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Tests.Queues;

[TestFixture]
public sealed class EventSuppressionTests
{
    private const ulong EventIdx = VirtioFeatures.RING_EVENT_IDX;

    [TestCase(false)]
    [TestCase(true)]
    public void Device_interrupts_only_when_used_event_is_passed(bool packed)
    {
        using QueueHarness h = QueueHarness.Create(packed, 16, EventIdx);
        DriverBuffer[] req = [h.Request(1)[1]];
        Assert.That(h.Driver.EnableInterrupts(), Is.False);

        // used_event = 0: completing 0 and 1 passes it.
        Submit(h, req, 2);
        CompleteAll(h);
        h.Device.NotifyIfNeeded();
        Assert.That(h.Interrupts, Is.EqualTo(1));

        // The driver has not consumed anything, so used_event still says 0: no new interrupt.
        Submit(h, req, 1);
        CompleteAll(h);
        h.Device.NotifyIfNeeded();
        Assert.That(h.Interrupts, Is.EqualTo(1));

        // Consuming moves used_event to the next entry: the next completion interrupts.
        Assert.That(Drain(h), Is.EqualTo(3));
        Submit(h, req, 1);
        CompleteAll(h);
        h.Device.NotifyIfNeeded();
        Assert.That(h.Interrupts, Is.EqualTo(2));
    }

    [TestCase(false, 0UL)]
    [TestCase(false, EventIdx)]
    [TestCase(true, 0UL)]
    [TestCase(true, EventIdx)]
    public void Device_does_not_interrupt_while_the_driver_disabled_interrupts(bool packed, ulong features)
    {
        using QueueHarness h = QueueHarness.Create(packed, 16, features);
        DriverBuffer[] req = [h.Request(1)[1]];
        h.Driver.DisableInterrupts();
        Submit(h, req, 3);
        CompleteAll(h);
        h.Device.NotifyIfNeeded();
        Assert.That(h.Interrupts, Is.Zero);

        // Re-enabling reports the completions that arrived meanwhile.
        Assert.That(h.Driver.EnableInterrupts(), Is.True);
        Assert.That(Drain(h), Is.EqualTo(3));
        Assert.That(h.Driver.EnableInterrupts(), Is.False);
        Submit(h, req, 1);
        CompleteAll(h);
        h.Device.NotifyIfNeeded();
        Assert.That(h.Interrupts, Is.EqualTo(1));
    }

    [TestCase(false)]
    [TestCase(true)]
    public void Device_does_not_interrupt_twice_for_nothing(bool packed)
    {
        using QueueHarness h = QueueHarness.Create(packed, 8);
        Submit(h, [h.Request(1)[1]], 1);
        CompleteAll(h);
        h.Device.NotifyIfNeeded();
        h.Device.NotifyIfNeeded();
        Assert.That(h.Interrupts, Is.EqualTo(1));
    }

    [TestCase(false)]
    [TestCase(true)]
    public void Driver_kicks_only_when_avail_event_is_passed(bool packed)
    {
        using QueueHarness h = QueueHarness.Create(packed, 16, EventIdx);
        DriverBuffer[] req = [h.Request(1)[1]];
        Assert.That(h.Device.EnableNotifications(), Is.False);

        Submit(h, req, 1);
        Assert.That(h.Driver.NeedsKick(), Is.True);

        // The device has not caught up, so avail_event still names the first entry: no kick.
        Submit(h, req, 1);
        Assert.That(h.Driver.NeedsKick(), Is.False);
        Assert.That(h.Driver.NeedsKick(), Is.False, "nothing new since the last call");

        // The device drains and re-arms at its new position: the next submission kicks again.
        h.Device.DisableNotifications();
        CompleteAll(h);
        Assert.That(h.Device.EnableNotifications(), Is.False);
        Submit(h, req, 1);
        Assert.That(h.Driver.NeedsKick(), Is.True);

        // Re-arming reports buffers that arrived while the device was busy.
        Assert.That(h.Device.EnableNotifications(), Is.True);
    }

    [TestCase(false, 0UL)]
    [TestCase(true, 0UL)]
    [TestCase(true, EventIdx)]
    public void Driver_does_not_kick_while_the_device_disabled_notifications(bool packed, ulong features)
    {
        using QueueHarness h = QueueHarness.Create(packed, 16, features);
        DriverBuffer[] req = [h.Request(1)[1]];
        h.Device.DisableNotifications();
        Submit(h, req, 2);
        Assert.That(h.Driver.NeedsKick(), Is.False);
        Assert.That(h.Device.EnableNotifications(), Is.True);
        CompleteAll(h);
        Assert.That(h.Device.EnableNotifications(), Is.False);
        Submit(h, req, 1);
        Assert.That(h.Driver.NeedsKick(), Is.True);
    }

    [Test]
    public void Split_event_index_suppression_survives_16_bit_wrap()
    {
        using QueueHarness h = QueueHarness.CreateSplitAt(65534, 8, EventIdx);
        DriverBuffer[] req = [h.Request(1)[1]];
        Assert.That(h.Driver.EnableInterrupts(), Is.False);
        Assert.That(h.Device.EnableNotifications(), Is.False);
        for (int i = 0; i < 6; i++)
        {
            Submit(h, req, 1);
            Assert.That(h.Driver.NeedsKick(), Is.True, $"kick {i}");
            Assert.That(h.Device.TryPop(out DescriptorChain c), Is.True);
            h.Device.Complete(c, 0);
            h.Device.NotifyIfNeeded();
            Assert.That(h.Interrupts, Is.EqualTo(i + 1), $"interrupt {i}");
            Assert.That(h.Device.EnableNotifications(), Is.False);
            Assert.That(Drain(h), Is.EqualTo(1));
        }
    }

    [Test]
    public void Vring_need_event_matches_the_spec_formula()
    {
        Assert.That(VirtqueueLayout.NeedEvent(0, 1, 0), Is.True);
        Assert.That(VirtqueueLayout.NeedEvent(1, 1, 0), Is.False);
        Assert.That(VirtqueueLayout.NeedEvent(65535, 2, 65534), Is.True);
        Assert.That(VirtqueueLayout.NeedEvent(2, 2, 65534), Is.False);
        Assert.That(VirtqueueLayout.NeedEvent(5, 5, 5), Is.False);
    }

    private static void Submit(QueueHarness h, DriverBuffer[] req, int count)
    {
        for (int i = 0; i < count; i++)
        {
            Assert.That(h.Driver.TrySubmit(req, i), Is.True);
        }
    }

    private static void CompleteAll(QueueHarness h)
    {
        while (h.Device.TryPop(out DescriptorChain c))
        {
            h.Device.Complete(c, 0);
        }
    }

    private static int Drain(QueueHarness h)
    {
        int n = 0;
        while (h.Driver.TryTakeUsed(out _, out _))
        {
            n++;
        }

        return n;
    }
}
