using Vmm.Core.Events;
using Vmm.Core.Interrupts;

namespace Vmm.Core.Tests.Interrupts;

[TestFixture]
public sealed class ForwardingInterruptLineTests
{
    [Test]
    public void Raise_reaches_the_current_target_only()
    {
        var first = new CountingLine(1);
        var second = new CountingLine(2);
        var line = new ForwardingInterruptLine(first);

        line.Raise();
        line.Retarget(second);
        line.Raise();
        line.Retarget(null);
        line.Raise();

        Assert.That(first.Delivered, Is.EqualTo(1));
        Assert.That(second.Delivered, Is.EqualTo(1));
        Assert.That(line.Vector, Is.EqualTo(-1));
    }

    [Test]
    public void Vector_eventfd_mask_and_pending_are_the_targets()
    {
        using var eventFd = new EventFd();
        var target = new EventBackedInterruptLine(70, eventFd);
        var line = new ForwardingInterruptLine(target);

        target.Mask();
        line.Raise();

        Assert.Multiple(() =>
        {
            Assert.That(line.Vector, Is.EqualTo(70));
            Assert.That(line.EventFd, Is.SameAs(eventFd));
            Assert.That(line.IsMasked, Is.True);
            Assert.That(line.IsPending, Is.True);
            Assert.That(eventFd.TryConsume(), Is.False);
        });

        line.Unmask();

        Assert.That(target.IsMasked, Is.False);
        Assert.That(eventFd.TryConsume(out ulong count), Is.True);
        Assert.That(count, Is.EqualTo(1UL));
    }

    [Test]
    public void RoutingChanged_runs_on_retarget_and_on_the_current_targets_mask_changes()
    {
        var first = new CountingLine(1);
        var second = new CountingLine(2);
        var line = new ForwardingInterruptLine(first);
        var seen = new List<(InterruptLine Sender, int Vector, bool Masked)>();
        line.RoutingChanged += l => seen.Add((l, l.Vector, l.IsMasked));

        first.Mask();
        line.Retarget(second);
        line.Retarget(second);
        first.Unmask();
        second.Mask();

        Assert.That(seen, Is.EqualTo(new[] { (line, 1, true), (line, 2, false), (line, 2, true) }));
    }

    [Test]
    public void Unmask_through_the_line_delivers_the_targets_pending_interrupt_once()
    {
        var target = new CountingLine(3);
        var line = new ForwardingInterruptLine(target);
        line.Mask();
        line.Raise();
        line.Raise();

        line.Unmask();

        Assert.That(target.Delivered, Is.EqualTo(1));
        Assert.That(line.ClearPending(), Is.False);
    }

    [Test]
    public void A_line_cannot_forward_to_itself()
    {
        var line = new ForwardingInterruptLine();

        Assert.That(() => line.Retarget(line), Throws.ArgumentException);
    }

    private sealed class CountingLine(int vector) : InterruptLine(vector)
    {
        private long _delivered;

        public long Delivered => Interlocked.Read(ref _delivered);

        protected override void Deliver() => Interlocked.Increment(ref _delivered);
    }
}
