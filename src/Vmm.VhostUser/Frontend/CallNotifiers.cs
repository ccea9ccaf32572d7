using Vmm.Core.Events;

namespace Vmm.VhostUser.Frontend;

/// <summary>
/// Watches <paramref name="eventFd"/> and calls <paramref name="onSignalled"/> with the count it
/// read each time it was signalled; disposing the result ends the watch, after which the callback
/// never runs again. The VM's notifier loop is one (one epoll thread for every proxied queue).
/// </summary>
public delegate IDisposable WatchCallNotifier(EventFd eventFd, Action<ulong> onSignalled);

/// <summary>
/// A watch with one blocked thread per notifier, for a device that was given no notifier loop
/// (a supervisor created outside a VM). Blocking in read() is the cheapest single wake-up here,
/// but it costs a thread per queue.
/// </summary>
public static class ThreadPerNotifier
{
    public static WatchCallNotifier Watch { get; } = Start;

    private static IDisposable Start(EventFd eventFd, Action<ulong> onSignalled)
    {
        ArgumentNullException.ThrowIfNull(eventFd);
        ArgumentNullException.ThrowIfNull(onSignalled);
        var watch = new Waiter(eventFd, onSignalled);
        watch.Thread.Start();
        return watch;
    }

    private sealed class Waiter : IDisposable
    {
        private readonly EventFd _wake = new();
        private readonly EventFd _eventFd;
        private readonly Action<ulong> _onSignalled;
        private int _disposed;

        public Waiter(EventFd eventFd, Action<ulong> onSignalled)
        {
            _eventFd = eventFd;
            _onSignalled = onSignalled;
            Thread = new Thread(Run) { IsBackground = true, Name = "vhost-user call" };
        }

        public Thread Thread { get; }

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) != 0)
            {
                return;
            }

            _wake.Signal();
            if (Thread.CurrentThread != Thread)
            {
                Thread.Join();
            }

            _wake.Dispose();
        }

        private void Run()
        {
            // The back-end may have set O_NONBLOCK on the shared open file (qemu-storage-daemon 7.2
            // does); WaitAny polls first, so it blocks correctly anyway. It consumes the counter
            // without saying how far it had counted: one interrupt stands for all of them.
            while (EventFd.WaitAny(_eventFd, _wake) == 0 && Volatile.Read(ref _disposed) == 0)
            {
                _onSignalled(1);
            }
        }
    }
}
