using Vmm.Core.Posix;

namespace Vmm.Core.Events;

/// <summary>
/// One thread that watches many eventfds with epoll(7) and runs a callback for each one that
/// is signalled: the VM's proxy notifiers (a vhost-user back-end's call fd on a function-backed
/// or masked line) cost one registration each instead of a thread each.
/// </summary>
/// <remarks>
/// <para>Each round is one epoll_wait: every ready eventfd of that round (up to
/// <see cref="MaxEventsPerRound"/>; the rest come in the next) is read, which resets its
/// counter, and its callback runs with the value read, on the loop thread, before the next
/// round starts. Signals that arrive between two rounds add up in the counter: one callback
/// reports them all.</para>
/// <para>The loop must be the only reader of a watched eventfd. The read tolerates a file a
/// peer made non-blocking (qemu-storage-daemon sets O_NONBLOCK on the fds it receives):
/// epoll only reports a readable counter, and a read that finds it empty is skipped. A peer
/// may write any value up to the counter's maximum (0xfffffffffffffffe, eventfd(2)); the
/// callback gets it as it was read.</para>
/// <para>Callbacks must be short and must not block: every other watched eventfd waits for
/// them.</para>
/// </remarks>
public sealed unsafe class EventNotifierLoop : IDisposable
{
    /// <summary>The most events one epoll_wait returns.</summary>
    public const int MaxEventsPerRound = 64;

    private const ulong WakeKey = 0;
    private const int EEXIST = 17;

    private readonly SafeFileDescriptor _epoll;
    private readonly EventFd _wake;
    private readonly Thread _thread;

    // Held while a round reads counters and runs callbacks. Unwatch takes it after removing the
    // fd from epoll, so once Unwatch returns no callback of that registration runs or will run.
    private readonly object _dispatch = new();
    private readonly Dictionary<ulong, EventNotifierRegistration> _registrations = [];
    private ulong _nextKey = WakeKey + 1;
    private long _rounds;
    private volatile bool _stopping;
    private int _disposed;

    /// <param name="name">The loop thread's name.</param>
    public EventNotifierLoop(string name)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        Name = name;
        _epoll = Epoll.Create();
        try
        {
            _wake = new EventFd();
            using FdLease wake = _wake.Handle.Lease();
            Add(wake.Fd, WakeKey);
        }
        catch
        {
            _wake?.Dispose();
            _epoll.Dispose();
            throw;
        }

        _thread = new Thread(Run) { IsBackground = true, Name = name };
        _thread.Start();
    }

    public string Name { get; }

    /// <summary>How many epoll_wait rounds found something to do (a figure for tests and diagnostics).</summary>
    public long Rounds => Interlocked.Read(ref _rounds);

    /// <summary>
    /// Raised on the loop thread when a callback throws (or reading a counter fails). Without a
    /// handler the exception is rethrown there and ends the process, as any unhandled exception
    /// on a thread does.
    /// </summary>
    public event Action<Exception>? CallbackFailed;

    /// <summary>
    /// Watches <paramref name="eventFd"/>: each time it is found signalled, its counter is read
    /// (and so reset) and <paramref name="onSignalled"/> runs on the loop thread with the value
    /// read (always above 0). The eventfd stays open at least until the registration is disposed.
    /// </summary>
    /// <exception cref="ObjectDisposedException">The loop or <paramref name="eventFd"/> is disposed.</exception>
    /// <exception cref="InvalidOperationException"><paramref name="eventFd"/> is already watched by this loop.</exception>
    public EventNotifierRegistration Watch(EventFd eventFd, Action<ulong> onSignalled)
    {
        ArgumentNullException.ThrowIfNull(eventFd);
        ArgumentNullException.ThrowIfNull(onSignalled);
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);

        // The fd is kept open while watched: were it closed, epoll would keep reporting the open
        // file (a back-end holds a duplicate) under a number that may be reused for another file.
        var registration = new EventNotifierRegistration(this, eventFd, onSignalled);
        try
        {
            // Under the dispatch lock: a Dispose of the loop either sees this registration (and
            // releases it) or comes first and is seen here.
            lock (_dispatch)
            {
                ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
                registration.Key = _nextKey++;
                Add(registration.Fd, registration.Key);
                _registrations.Add(registration.Key, registration);
            }
        }
        catch (Exception e)
        {
            registration.ReleaseFd();
            if (e is PosixException { Errno: EEXIST })
            {
                throw new InvalidOperationException("This eventfd is already watched by this loop.", e);
            }

            throw;
        }

        return registration;
    }

    /// <summary>Stops the loop thread (waits for it unless called on it) and forgets every registration.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _stopping = true;
        _wake.Signal();
        if (Thread.CurrentThread != _thread)
        {
            _thread.Join();
        }

        lock (_dispatch)
        {
            foreach (EventNotifierRegistration registration in _registrations.Values)
            {
                registration.ReleaseFd();
            }

            _registrations.Clear();
        }

        _wake.Dispose();
        _epoll.Dispose();
    }

    internal void Unwatch(EventNotifierRegistration registration)
    {
        // Out of epoll first, so the loop cannot keep finding a ready fd it no longer knows. The
        // registration's own reference keeps this number valid, even when the EventFd was
        // disposed meanwhile (its close waits for that reference).
        Epoll.Remove(_epoll, registration.Fd);

        // Waits for a round in progress: its callbacks may include this registration's.
        bool removed;
        lock (_dispatch)
        {
            removed = _registrations.Remove(registration.Key);
        }

        if (removed)
        {
            registration.ReleaseFd();
        }
    }

    private void Add(int fd, ulong key) => Epoll.AddReadable(_epoll, fd, key);

    private void Run()
    {
        using FdLease epoll = _epoll.Lease();
        byte* events = stackalloc byte[Epoll.EventBufferSize(MaxEventsPerRound)];
        while (!_stopping)
        {
            int n = Epoll.Wait(epoll.Fd, events, MaxEventsPerRound);
            if (n > 0)
            {
                RunRound(events, n);
            }
        }
    }

    private void RunRound(byte* events, int count)
    {
        lock (_dispatch)
        {
            Interlocked.Increment(ref _rounds);
            for (int i = 0; i < count && !_stopping; i++)
            {
                ulong key = Epoll.KeyOf(events, i);
                if (key == WakeKey)
                {
                    _wake.TryConsume();
                    continue;
                }

                // Unwatched after epoll_wait returned: its fd may already be closed.
                if (!_registrations.TryGetValue(key, out EventNotifierRegistration? registration))
                {
                    continue;
                }

                try
                {
                    if (registration.TryReadCounter(out ulong value))
                    {
                        registration.Callback(value);
                    }
                }
                catch (Exception e) when (CallbackFailed is not null)
                {
                    CallbackFailed.Invoke(e);
                }
            }
        }
    }
}

/// <summary>
/// One eventfd watched by an <see cref="EventNotifierLoop"/>. <see cref="Dispose"/> stops the
/// watch: when it returns (called on any thread but the loop's), the callback is not running
/// and will not run again; called from the callback itself, no later call follows.
/// </summary>
public sealed class EventNotifierRegistration : IDisposable
{
    private readonly EventNotifierLoop _loop;
    private int _fdReleased;
    private int _disposed;

    internal EventNotifierRegistration(EventNotifierLoop loop, EventFd eventFd, Action<ulong> callback)
    {
        _loop = loop;
        EventFd = eventFd;
        Callback = callback;
        bool added = false;
        eventFd.Handle.DangerousAddRef(ref added);
        Fd = eventFd.Handle.DangerousFd;
    }

    /// <summary>The watched eventfd.</summary>
    public EventFd EventFd { get; }

    internal ulong Key { get; set; }

    /// <summary>The descriptor number, valid until <see cref="ReleaseFd"/>.</summary>
    internal int Fd { get; }

    internal Action<ulong> Callback { get; }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            _loop.Unwatch(this);
        }
    }

    /// <summary>Reads (and so resets) the counter; false when a peer's O_NONBLOCK made an empty read return EAGAIN.</summary>
    internal bool TryReadCounter(out ulong value) => EventCounter.TryRead(Fd, out value);

    /// <summary>Lets the eventfd close (called once it is out of the loop's epoll set and table).</summary>
    internal void ReleaseFd()
    {
        if (Interlocked.Exchange(ref _fdReleased, 1) == 0)
        {
            EventFd.Handle.DangerousRelease();
        }
    }
}
