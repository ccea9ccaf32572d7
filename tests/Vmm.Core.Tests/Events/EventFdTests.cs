using Vmm.Core.Events;
using Vmm.Core.Posix;
using Vmm.Core.Tests.Support;

namespace Vmm.Core.Tests.Events;

[TestFixture]
public sealed class EventFdTests
{
    [Test]
    public void TryConsume_is_false_until_signalled_and_consumes_the_count()
    {
        using var e = new EventFd();

        Assert.That(e.TryConsume(), Is.False);
        e.Signal();
        e.Signal();
        Assert.That(e.TryConsume(out ulong count), Is.True);
        Assert.That(count, Is.EqualTo(2UL));
        Assert.That(e.TryConsume(), Is.False);
    }

    [Test]
    public async Task Wait_blocks_until_signalled()
    {
        using var e = new EventFd();
        Task<bool> waiter = Task.Factory.StartNew(() => e.Wait(), TaskCreationOptions.LongRunning);

        await Task.Delay(50);
        Assert.That(waiter.IsCompleted, Is.False);
        e.Signal();
        Assert.That(await waiter.WaitAsync(TimeSpan.FromSeconds(10)), Is.True);
    }

    [Test]
    public void Wait_with_timeout_returns_false_when_nothing_comes()
    {
        using var e = new EventFd();

        Assert.That(e.Wait(20), Is.False);
    }

    [Test]
    public async Task Dispose_wakes_a_blocked_waiter()
    {
        var e = new EventFd();
        Task<bool> waiter = Task.Factory.StartNew(() => e.Wait(), TaskCreationOptions.LongRunning);
        await Task.Delay(50);

        e.Dispose();

        Assert.That(await waiter.WaitAsync(TimeSpan.FromSeconds(10)), Is.False);
        Assert.That(e.Handle.IsClosed, Is.True);
        Assert.That(() => e.Signal(), Throws.Nothing);
    }

    [Test]
    public void A_nonblocking_shared_file_still_waits()
    {
        // A peer may set O_NONBLOCK on the open file it shares with us (qemu-storage-daemon does).
        using var e = new EventFd();
        int flags = Mono.Unix.Native.Syscall.fcntl((int)e.Handle.DangerousGetHandle(), Mono.Unix.Native.FcntlCommand.F_GETFL);
        Mono.Unix.Native.Syscall.fcntl((int)e.Handle.DangerousGetHandle(), Mono.Unix.Native.FcntlCommand.F_SETFL, flags | 0x800);

        Assert.That(e.Wait(10), Is.False);
        e.Signal();
        Assert.That(e.Wait(1000), Is.True);
    }

    [Test]
    public async Task WaitAny_reports_which_was_signalled()
    {
        using var kick = new EventFd();
        using var stop = new EventFd();

        kick.Signal();
        Assert.That(EventFd.WaitAny(kick, stop, 1000), Is.EqualTo(0));
        stop.Signal();
        Assert.That(EventFd.WaitAny(kick, stop, 1000), Is.EqualTo(1));
        Assert.That(EventFd.WaitAny(kick, stop, 10), Is.EqualTo(-1));

        Task<int> waiter = Task.Factory.StartNew(() => EventFd.WaitAny(kick, stop), TaskCreationOptions.LongRunning);
        await Task.Delay(20);
        stop.Signal();
        Assert.That(await waiter.WaitAsync(TimeSpan.FromSeconds(10)), Is.EqualTo(1));
    }

    [Test]
    public void Signals_cross_duplicated_descriptors()
    {
        using var e = new EventFd();
        int copy = Mono.Unix.Native.Syscall.dup((int)e.Handle.DangerousGetHandle());
        using var peer = new EventFd(new Vmm.Core.Posix.SafeFileDescriptor(copy));

        peer.Signal();
        Assert.That(e.Wait(1000), Is.True);
    }

    [Test]
    public void Our_eventfds_are_non_blocking()
    {
        using var e = new EventFd();

        Assert.That(FileDescriptors.IsNonBlocking(e.Handle), Is.True);
    }

    [Test]
    public void A_peer_eventfd_is_made_non_blocking()
    {
        int raw = Interop.Libc.EventFd(0, Interop.Libc.EFD_CLOEXEC);
        using var peer = new EventFd(new SafeFileDescriptor(raw));

        Assert.That(FileDescriptors.IsNonBlocking(peer.Handle), Is.True);
    }

    [Test]
    public void A_saturated_counter_drops_the_signal_instead_of_blocking()
    {
        // A peer can push the counter to its maximum, 0xfffffffffffffffe (eventfd(2)): a blocking
        // write of 1 would then wait for a read that never comes.
        using var e = new EventFd();
        Assert.That(EventCounter.Add(e.Handle, 0xffff_ffff_ffff_fffe, out _), Is.EqualTo(EventCounterAdd.Added));

        Assert.That(e.TrySignal(out int errno), Is.True);
        Assert.That(errno, Is.EqualTo(11), "EAGAIN, dropped");
        Assert.That(() => e.Signal(), Throws.Nothing);
        Assert.That(e.TryConsume(out ulong count), Is.True);
        Assert.That(count, Is.EqualTo(0xffff_ffff_ffff_fffeUL), "the pending wake-up is still there");
    }

    [Test]
    public void A_descriptor_that_is_not_an_eventfd_is_refused_and_closed()
    {
        (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
        SafeFileDescriptor full = TestFiles.Open("/dev/full");
        SafeFileDescriptor memfd = MemFd.Create("not-an-eventfd", 4096);

        Assert.That(() => new EventFd(read), Throws.ArgumentException.With.Message.Contains("a pipe"));
        Assert.That(() => new EventFd(full), Throws.ArgumentException.With.Message.Contains("/dev/full"));
        Assert.That(() => new EventFd(memfd), Throws.ArgumentException.With.Message.Contains("not an eventfd"));
        Assert.That(read.IsClosed && full.IsClosed && memfd.IsClosed, Is.True, "ownership was taken, also on refusal");
        write.Dispose();
    }

    [Test]
    public void WaitAny_reports_a_readable_third_descriptor_without_consuming_it()
    {
        using var stop = new EventFd();
        (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
        using (read)
        using (write)
        {
            Assert.That(EventFd.WaitAny(null, stop, read, 10), Is.EqualTo(-1), "nothing ready: timeout");
            Pipe.WriteAll(write, [1]);

            Assert.That(EventFd.WaitAny(null, stop, read, 10_000), Is.EqualTo(2));
            Assert.That(EventFd.WaitAny(null, stop, read, 10_000), Is.EqualTo(2), "still readable: nothing was consumed");
            stop.Signal();
            Assert.That(EventFd.WaitAny(null, stop, read, 10_000), Is.EqualTo(1), "a stop wins over the readable descriptor");
        }
    }
}
