using System.Collections.Concurrent;
using Mono.Unix.Native;
using Vmm.Core.Events;
using Vmm.TestKit;

namespace Vmm.Core.Tests.Events;

[TestFixture]
public sealed class EventNotifierLoopTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    [Test]
    public void A_signal_runs_the_callback_on_the_loop_thread_with_the_counter()
    {
        using var loop = new EventNotifierLoop("test-loop");
        using var e = new EventFd();
        var calls = new BlockingCollection<(ulong Value, string? Thread)>();
        using EventNotifierRegistration r = loop.Watch(e, v => calls.Add((v, Thread.CurrentThread.Name)));

        e.Signal();

        Assert.That(calls.TryTake(out var call, Patience), Is.True);
        Assert.That(call, Is.EqualTo((1UL, (string?)"test-loop")));
        Assert.That(e.TryConsume(), Is.False, "the loop read (and reset) the counter");
    }

    [Test]
    public void Signals_made_while_the_loop_is_busy_are_reported_by_one_callback_with_their_sum()
    {
        using var loop = new EventNotifierLoop("test-loop");
        using var gate = new ManualResetEventSlim(false);
        using var busy = new EventFd();
        using var e = new EventFd();
        var entered = new ManualResetEventSlim(false);
        var values = new BlockingCollection<ulong>();
        using EventNotifierRegistration hold = loop.Watch(busy, _ => { entered.Set(); gate.Wait(Patience); });
        using EventNotifierRegistration r = loop.Watch(e, values.Add);

        busy.Signal();
        Assert.That(entered.Wait(Patience), Is.True);
        e.Signal();
        e.Signal();
        e.Signal();
        gate.Set();

        Assert.That(values.TryTake(out ulong value, Patience), Is.True);
        Assert.That(value, Is.EqualTo(3UL));
        Assert.That(values.TryTake(out _, 200), Is.False);
    }

    [Test]
    public void One_round_handles_every_eventfd_that_is_ready()
    {
        using var loop = new EventNotifierLoop("test-loop");
        using var gate = new ManualResetEventSlim(false);
        using var busy = new EventFd();
        var entered = new ManualResetEventSlim(false);
        using EventNotifierRegistration hold = loop.Watch(busy, _ => { entered.Set(); gate.Wait(Patience); });
        var rounds = new ConcurrentBag<long>();
        using var all = new CountdownEvent(20);
        using WatchedGroup group = WatchMany(loop, 20, _ => { rounds.Add(loop.Rounds); all.Signal(); });

        busy.Signal();
        Assert.That(entered.Wait(Patience), Is.True);
        group.SignalAll();
        gate.Set();

        Assert.That(all.Wait(Patience), Is.True);
        Assert.That(rounds.Distinct().Count(), Is.EqualTo(1), "the ready eventfds took more than one epoll_wait round");
    }

    [Test]
    public void More_ready_eventfds_than_one_round_takes_are_all_handled()
    {
        using var loop = new EventNotifierLoop("test-loop");
        int count = (EventNotifierLoop.MaxEventsPerRound * 2) + 5;
        using var all = new CountdownEvent(count);
        using WatchedGroup group = WatchMany(loop, count, _ => all.Signal());

        group.SignalAll();

        Assert.That(all.Wait(Patience), Is.True);
    }

    [Test]
    public void Dispose_waits_for_a_running_callback_and_no_call_follows()
    {
        using var loop = new EventNotifierLoop("test-loop");
        using var gate = new ManualResetEventSlim(false);
        using var e = new EventFd();
        using var sentinel = new EventFd();
        var entered = new ManualResetEventSlim(false);
        int calls = 0;
        int running = 0;
        EventNotifierRegistration r = loop.Watch(e, _ =>
        {
            Interlocked.Increment(ref calls);
            Volatile.Write(ref running, 1);
            entered.Set();
            gate.Wait(Patience);
            Volatile.Write(ref running, 0);
        });
        var sentinelSeen = new ManualResetEventSlim(false);
        using EventNotifierRegistration s = loop.Watch(sentinel, _ => sentinelSeen.Set());

        e.Signal();
        Assert.That(entered.Wait(Patience), Is.True);
        Task disposing = Task.Factory.StartNew(r.Dispose, TaskCreationOptions.LongRunning);
        Thread.Sleep(50);
        Assert.That(disposing.IsCompleted, Is.False, "Dispose returned while the callback ran");
        gate.Set();
        Assert.That(disposing.Wait(Patience), Is.True);
        Assert.That(Volatile.Read(ref running), Is.Zero);

        // A later signal is not reported: once the sentinel, signalled after it, has been seen,
        // the loop has had its chance.
        e.Signal();
        sentinel.Signal();
        Assert.That(sentinelSeen.Wait(Patience), Is.True);
        Assert.That(Volatile.Read(ref calls), Is.EqualTo(1));
    }

    [Test]
    public void Dispose_from_the_callback_itself_ends_the_calls()
    {
        using var loop = new EventNotifierLoop("test-loop");
        using var e = new EventFd();
        using var sentinel = new EventFd();
        int calls = 0;
        EventNotifierRegistration? r = null;
        var first = new ManualResetEventSlim(false);
        r = loop.Watch(e, _ =>
        {
            Interlocked.Increment(ref calls);
            r!.Dispose();
            first.Set();
        });
        var sentinelSeen = new ManualResetEventSlim(false);
        using EventNotifierRegistration s = loop.Watch(sentinel, _ => sentinelSeen.Set());

        e.Signal();
        Assert.That(first.Wait(Patience), Is.True);
        e.Signal();
        sentinel.Signal();

        Assert.That(sentinelSeen.Wait(Patience), Is.True);
        Assert.That(Volatile.Read(ref calls), Is.EqualTo(1));
    }

    [Test]
    public void An_eventfd_a_peer_made_nonblocking_is_watched_like_any_other()
    {
        using var loop = new EventNotifierLoop("test-loop");
        using var e = new EventFd();
        int fd = (int)e.Handle.DangerousGetHandle();
        int flags = Syscall.fcntl(fd, FcntlCommand.F_GETFL);
        Assert.That(Syscall.fcntl(fd, FcntlCommand.F_SETFL, flags | (int)OpenFlags.O_NONBLOCK), Is.Zero);
        var values = new BlockingCollection<ulong>();
        using EventNotifierRegistration r = loop.Watch(e, values.Add);

        for (int i = 0; i < 3; i++)
        {
            e.Signal();
            Assert.That(values.TryTake(out ulong value, Patience), Is.True);
            Assert.That(value, Is.EqualTo(1UL));
        }
    }

    [Test]
    public unsafe void A_saturated_counter_is_reported_as_written()
    {
        // eventfd(2): the counter holds at most 0xfffffffffffffffe; a peer may write that at once.
        const ulong max = 0xffff_ffff_ffff_fffeUL;
        using var loop = new EventNotifierLoop("test-loop");
        using var e = new EventFd();
        var values = new BlockingCollection<ulong>();
        using EventNotifierRegistration r = loop.Watch(e, values.Add);

        ulong v = max;
        Assert.That((long)Syscall.write((int)e.Handle.DangerousGetHandle(), &v, sizeof(ulong)), Is.EqualTo(sizeof(ulong)));

        Assert.That(values.TryTake(out ulong value, Patience), Is.True);
        Assert.That(value, Is.EqualTo(max));
        e.Signal();
        Assert.That(values.TryTake(out value, Patience), Is.True);
        Assert.That(value, Is.EqualTo(1UL), "the saturated counter was not reset by the read");
    }

    [Test]
    public void A_callback_that_throws_is_reported_and_the_loop_goes_on()
    {
        using var loop = new EventNotifierLoop("test-loop");
        var failures = new BlockingCollection<Exception>();
        loop.CallbackFailed += failures.Add;
        using var bad = new EventFd();
        using var good = new EventFd();
        var goodSeen = new ManualResetEventSlim(false);
        using EventNotifierRegistration b = loop.Watch(bad, _ => throw new InvalidOperationException("boom"));
        using EventNotifierRegistration g = loop.Watch(good, _ => goodSeen.Set());

        bad.Signal();
        Assert.That(failures.TryTake(out Exception? failure, Patience), Is.True);
        good.Signal();

        Assert.That(failure, Is.InstanceOf<InvalidOperationException>());
        Assert.That(goodSeen.Wait(Patience), Is.True);
    }

    [Test]
    public void Watching_an_eventfd_twice_is_refused_and_a_disposed_one_cannot_be_watched()
    {
        using var loop = new EventNotifierLoop("test-loop");
        using var e = new EventFd();
        var gone = new EventFd();
        gone.Dispose();
        using EventNotifierRegistration r = loop.Watch(e, _ => { });

        Assert.That(() => loop.Watch(e, _ => { }), Throws.InvalidOperationException);
        Assert.That(() => loop.Watch(gone, _ => { }), Throws.InstanceOf<ObjectDisposedException>());
    }

    [Test]
    public void A_disposed_loop_refuses_watches_and_its_registrations_dispose_quietly()
    {
        var loop = new EventNotifierLoop("test-loop");
        using var e = new EventFd();
        EventNotifierRegistration r = loop.Watch(e, _ => { });

        loop.Dispose();

        Assert.That(() => loop.Watch(e, _ => { }), Throws.InstanceOf<ObjectDisposedException>());
        Assert.That(r.Dispose, Throws.Nothing);
        Assert.That(loop.Dispose, Throws.Nothing);
    }

    [Test]
    public void An_eventfd_disposed_while_watched_closes_when_the_watch_ends()
    {
        using var loop = new EventNotifierLoop("test-loop");
        int before = OpenDescriptors.Count();
        var e = new EventFd();
        EventNotifierRegistration r = loop.Watch(e, _ => { });

        e.Dispose();
        Assert.That(OpenDescriptors.Count(), Is.EqualTo(before + 1), "the fd closed while epoll still watched it");
        r.Dispose();

        Assert.That(OpenDescriptors.Count(), Is.EqualTo(before), string.Join(", ", OpenDescriptors.Describe()));
    }

    [Test]
    public void Loops_and_registrations_leave_no_descriptor_open()
    {
        int before = OpenDescriptors.Count();
        int epollBefore = EpollInstances();
        for (int i = 0; i < 20; i++)
        {
            using var loop = new EventNotifierLoop("test-loop");
            using var e = new EventFd();
            var seen = new ManualResetEventSlim(false);
            EventNotifierRegistration r = loop.Watch(e, _ => seen.Set());
            e.Signal();
            Assert.That(seen.Wait(Patience), Is.True);
            if (i % 2 == 0)
            {
                r.Dispose();
            }
        }

        Assert.That(OpenDescriptors.Count(), Is.EqualTo(before), string.Join(", ", OpenDescriptors.Describe()));
        Assert.That(EpollInstances(), Is.EqualTo(epollBefore));
    }

    private static WatchedGroup WatchMany(EventNotifierLoop loop, int count, Action<ulong> callback)
    {
        EventFd[] fds = [.. Enumerable.Range(0, count).Select(_ => new EventFd())];
        return new WatchedGroup(fds, [.. fds.Select(f => loop.Watch(f, callback))]);
    }

    private static int EpollInstances() => Directory.GetFileSystemEntries("/proc/self/fd")
        .Count(entry =>
        {
            try
            {
                return new FileInfo(entry).LinkTarget == "anon_inode:[eventpoll]";
            }
            catch (IOException)
            {
                return false;
            }
        });

    private sealed class WatchedGroup(EventFd[] fds, EventNotifierRegistration[] registrations) : IDisposable
    {
        public void SignalAll()
        {
            foreach (EventFd f in fds)
            {
                f.Signal();
            }
        }

        public void Dispose()
        {
            foreach (EventNotifierRegistration r in registrations)
            {
                r.Dispose();
            }

            foreach (EventFd f in fds)
            {
                f.Dispose();
            }
        }
    }
}
