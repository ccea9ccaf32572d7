using System.Collections.Concurrent;
using Vmm.Core.Interrupts;

namespace Vmm.Core.Tests.Interrupts;

[TestFixture]
public sealed class InterruptLineTests
{
    [Test]
    public void A_raise_on_an_unmasked_line_is_delivered_at_once()
    {
        var line = new CountingLine();

        line.Raise();
        line.Raise();

        Assert.That(line.Delivered, Is.EqualTo(2));
        Assert.That(line.IsPending, Is.False);
    }

    [Test]
    public void A_raise_on_a_masked_line_sets_the_pending_bit_and_delivers_nothing()
    {
        var line = new CountingLine();
        line.Mask();

        line.Raise();

        Assert.That(line.IsMasked, Is.True);
        Assert.That(line.IsPending, Is.True);
        Assert.That(line.Delivered, Is.Zero);
    }

    [Test]
    public void Unmask_delivers_exactly_one_interrupt_for_many_masked_raises()
    {
        var line = new CountingLine();
        line.Mask();
        for (int i = 0; i < 10; i++)
        {
            line.Raise();
        }

        line.Unmask();

        Assert.That(line.Delivered, Is.EqualTo(1));
        Assert.That(line.IsPending, Is.False);
        Assert.That(line.IsMasked, Is.False);
    }

    [Test]
    public void Unmask_with_nothing_pending_delivers_nothing()
    {
        var line = new CountingLine();
        line.Mask();

        line.Unmask();
        line.Unmask();

        Assert.That(line.Delivered, Is.Zero);
    }

    [Test]
    public void ClearPending_drops_the_pending_interrupt_and_says_whether_there_was_one()
    {
        var line = new CountingLine();
        line.Mask();
        line.Raise();

        Assert.That(line.ClearPending(), Is.True);
        Assert.That(line.ClearPending(), Is.False);
        line.Unmask();

        Assert.That(line.Delivered, Is.Zero);
    }

    [Test]
    public void RoutingChanged_runs_for_each_mask_change_and_before_the_pending_delivery()
    {
        var line = new CountingLine();
        var events = new List<string>();
        line.RoutingChanged += l => events.Add($"routing masked={l.IsMasked} delivered={((CountingLine)l).Delivered}");
        line.Delivering += () => events.Add("deliver");

        line.Mask();
        line.Mask();
        line.Raise();
        line.Unmask();
        line.Unmask();

        Assert.That(events, Is.EqualTo(new[] { "routing masked=True delivered=0", "routing masked=False delivered=0", "deliver" }));
    }

    [Test]
    public void A_raise_racing_with_mask_toggles_is_never_lost()
    {
        // One raiser waits after each raise for a delivery that follows it, while another thread
        // masks and unmasks as fast as it can: a raise that set the pending bit and was then not
        // delivered by the next unmask would leave the raiser waiting until the deadline.
        var line = new CountingLine();
        using var done = new CancellationTokenSource();
        long deadline = Environment.TickCount64 + 60_000;
        Task toggler = Task.Factory.StartNew(
            () =>
            {
                while (!done.IsCancellationRequested)
                {
                    line.Mask();
                    Thread.SpinWait(20);
                    line.Unmask();
                }
            },
            TaskCreationOptions.LongRunning);

        const int raises = 20_000;
        try
        {
            for (int i = 0; i < raises; i++)
            {
                long before = line.Delivered;
                line.Raise();
                var spin = new SpinWait();
                while (Interlocked.Read(ref line.DeliveredCount) == before)
                {
                    Assert.That(Environment.TickCount64, Is.LessThan(deadline), $"raise {i} was never delivered");
                    spin.SpinOnce();
                }
            }
        }
        finally
        {
            done.Cancel();
            toggler.Wait();
        }

        Assert.That(line.Delivered, Is.LessThanOrEqualTo(raises), "more deliveries than raises");
        Assert.That(line.IsPending, Is.False);
    }

    [Test]
    public void A_raise_racing_with_an_unmask_is_delivered_exactly_once_by_the_time_both_return()
    {
        // Each round starts masked; one thread raises while another unmasks. Whichever wins, the
        // raise is either delivered directly or left pending and delivered by the unmask: one
        // delivery, nothing left pending. A raise that set the pending bit after the unmask had
        // looked would stay pending on an unmasked line.
        var line = new CountingLine();
        using var step = new Barrier(2);
        const int rounds = 20_000;
        string? failure = null;
        Task unmasker = Task.Factory.StartNew(
            () =>
            {
                for (int i = 0; i < rounds; i++)
                {
                    step.SignalAndWait();
                    line.Unmask();
                    step.SignalAndWait();
                }
            },
            TaskCreationOptions.LongRunning);

        for (int i = 0; i < rounds && failure is null; i++)
        {
            line.Mask();
            long before = line.Delivered;
            step.SignalAndWait();
            line.Raise();
            step.SignalAndWait();
            if (line.Delivered != before + 1 || line.IsPending)
            {
                failure = $"round {i}: {line.Delivered - before} deliveries, pending={line.IsPending}";
            }
        }

        if (failure is not null)
        {
            step.RemoveParticipant();
        }

        Assert.That(failure, Is.Null);
        Assert.That(unmasker.Wait(TimeSpan.FromSeconds(60)), Is.True);
    }

    [Test]
    public void Concurrent_raises_and_unmasks_deliver_at_most_once_per_raise_and_leave_nothing_pending()
    {
        var line = new CountingLine();
        var raisers = new ConcurrentBag<Task>();
        long raised = 0;
        using var start = new Barrier(5);
        for (int t = 0; t < 4; t++)
        {
            raisers.Add(Task.Factory.StartNew(
                () =>
                {
                    start.SignalAndWait();
                    for (int i = 0; i < 50_000; i++)
                    {
                        line.Raise();
                        Interlocked.Increment(ref raised);
                    }
                },
                TaskCreationOptions.LongRunning));
        }

        start.SignalAndWait();
        while (!raisers.All(r => r.IsCompleted))
        {
            line.Mask();
            line.Unmask();
        }

        Task.WaitAll([.. raisers]);
        line.Unmask();

        Assert.That(line.Delivered, Is.InRange(1, raised));
        Assert.That(line.IsPending, Is.False);
    }

    private sealed class CountingLine() : InterruptLine(5)
    {
        public long DeliveredCount;

        public event Action? Delivering;

        public long Delivered => Interlocked.Read(ref DeliveredCount);

        protected override void Deliver()
        {
            Delivering?.Invoke();
            Interlocked.Increment(ref DeliveredCount);
        }
    }
}
