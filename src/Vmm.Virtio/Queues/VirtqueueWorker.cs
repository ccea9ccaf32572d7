using Vmm.Core.Events;
using Vmm.Core.Memory;
using Vmm.Core.Posix;
using Vmm.Virtio.Metrics;

namespace Vmm.Virtio.Queues;

/// <summary>Handles one chain on the worker thread; returns the bytes written into its writable buffers.</summary>
public delegate uint VirtqueueHandler(DescriptorChain chain);

/// <summary>
/// Runs one virtqueue on a dedicated thread (a thread blocked on its eventfd is the fastest
/// wake-up there is: no actor or thread-pool hop on the data path). Each kick drains the ring with
/// notifications disabled, sends at most one interrupt per batch, then re-enables notifications
/// and drains again if buffers arrived meanwhile (2.7.10 / 2.8.10). Without a kick fd (vhost-user
/// NOFD) it polls.
/// </summary>
/// <remarks>
/// <para>Two ways to handle a chain. A <see cref="VirtqueueHandler"/> finishes it on the spot (the
/// entropy device); nothing else is on its path. An <see cref="IQueueRequestProcessor"/> (the block
/// device) starts each chain as it is popped and completes it later, out of order, on this same
/// thread: the worker then also sleeps on the processor's completion descriptor, and a wake-up
/// reaps what finished, publishes the used entries and notifies once for the batch.</para>
/// <para>Stopping takes no new chains but waits for those in flight and returns them to the
/// driver, so the state <see cref="Stop"/> reports has nothing outstanding. A malformed ring
/// (<see cref="VirtqueueException"/>, <see cref="GuestMemoryException"/>) or any other exception
/// stops the worker and is reported through the fault callback; nothing escapes the thread
/// (requests in flight are then waited for, not returned). Control calls (<see cref="Start"/>,
/// <see cref="Stop"/>) may come from any thread.</para>
/// </remarks>
public sealed class VirtqueueWorker : IDisposable
{
    /// <summary>Poll interval when there is no kick fd.</summary>
    public const int DefaultPollIntervalMilliseconds = 1;

    /// <summary>
    /// How long <see cref="Stop"/> waits for the thread. The chain in hand completes first, which
    /// takes as long as the device's handler; a handler that takes longer is stuck, and the
    /// caller must not wait on it forever (its control lock would be held all that time).
    /// </summary>
    public static readonly TimeSpan StopTimeout = TimeSpan.FromSeconds(10);

    private readonly IDeviceQueue _queue;
    private readonly EventFd? _kick;
    private readonly VirtqueueHandler? _handler;
    private readonly IQueueRequestProcessor? _processor;
    private readonly Action<Exception>? _onFault;
    private readonly int _pollIntervalMilliseconds;
    private readonly EventFd _stop = new();
    private readonly Thread _thread;
    private readonly object _control = new();
    private volatile bool _stopRequested;
    private bool _started;
    private VirtqueueState? _stoppedState;
    private volatile Exception? _fault;

    /// <param name="name">Thread name, e.g. "vq-blk-0".</param>
    /// <param name="queue">The queue this worker alone drives.</param>
    /// <param name="kick">The kick eventfd, or null to poll every <paramref name="pollIntervalMilliseconds"/>.</param>
    /// <param name="handler">Processes one chain.</param>
    /// <param name="onFault">Told once, on the worker thread, when the worker stops on an error.</param>
    /// <param name="pollIntervalMilliseconds">How often a queue without a kick eventfd is looked at.</param>
    public VirtqueueWorker(
        string name,
        IDeviceQueue queue,
        EventFd? kick,
        VirtqueueHandler handler,
        Action<Exception>? onFault = null,
        int pollIntervalMilliseconds = DefaultPollIntervalMilliseconds)
        : this(name, queue, kick, handler ?? throw new ArgumentNullException(nameof(handler)), null, onFault, pollIntervalMilliseconds)
    {
    }

    /// <param name="name">Thread name, e.g. "vq-blk-0".</param>
    /// <param name="queue">The queue this worker alone drives.</param>
    /// <param name="kick">The kick eventfd, or null to poll every <paramref name="pollIntervalMilliseconds"/>.</param>
    /// <param name="processor">Starts and completes requests; owned by the worker, disposed when its thread ends.</param>
    /// <param name="onFault">Told once, on the worker thread, when the worker stops on an error.</param>
    /// <param name="pollIntervalMilliseconds">How often a queue without a kick eventfd is looked at.</param>
    public VirtqueueWorker(
        string name,
        IDeviceQueue queue,
        EventFd? kick,
        IQueueRequestProcessor processor,
        Action<Exception>? onFault = null,
        int pollIntervalMilliseconds = DefaultPollIntervalMilliseconds)
        : this(name, queue, kick, null, processor ?? throw new ArgumentNullException(nameof(processor)), onFault, pollIntervalMilliseconds)
    {
    }

    private VirtqueueWorker(
        string name,
        IDeviceQueue queue,
        EventFd? kick,
        VirtqueueHandler? handler,
        IQueueRequestProcessor? processor,
        Action<Exception>? onFault,
        int pollIntervalMilliseconds)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(pollIntervalMilliseconds);
        _queue = queue ?? throw new ArgumentNullException(nameof(queue));
        _handler = handler;
        _processor = processor;
        _kick = kick;
        _onFault = onFault;
        _pollIntervalMilliseconds = pollIntervalMilliseconds;
        _thread = new Thread(Run) { IsBackground = true, Name = name };
    }

    public IDeviceQueue Queue => _queue;

    /// <summary>
    /// Where the worker counts kicks, interrupts, faults and requests in flight (and, for a
    /// <see cref="VirtqueueHandler"/>, each chain as a request); a processor counts its own
    /// requests. Null: not counted. Set before <see cref="Start"/>.
    /// </summary>
    public QueueMetrics? Metrics { get; init; }

    /// <summary>The error that stopped the worker, if one did.</summary>
    public Exception? Fault => _fault;

    /// <summary>True from <see cref="Start"/> until the thread has ended.</summary>
    public bool IsRunning => _started && _thread.IsAlive;

    public void Start()
    {
        lock (_control)
        {
            if (_started)
            {
                throw new InvalidOperationException("The worker was already started.");
            }

            _started = true;
            _thread.Start();
        }
    }

    /// <summary>
    /// Stops the thread (chains already taken complete first) and returns the queue's state,
    /// read after the thread ended. Idempotent: later calls return the same state.
    /// </summary>
    /// <exception cref="TimeoutException">
    /// The thread did not end within <see cref="StopTimeout"/>: it is stuck in the handler. It may
    /// still touch the queue's memory, which must then stay mapped; a later call tries again.
    /// </exception>
    public VirtqueueState Stop()
    {
        lock (_control)
        {
            if (_stoppedState is { } done)
            {
                return done;
            }

            _stopRequested = true;
            if (_started)
            {
                _stop.Signal();
                if (Thread.CurrentThread != _thread && !_thread.Join(StopTimeout))
                {
                    throw new TimeoutException($"The queue worker {_thread.Name} did not stop within {StopTimeout.TotalSeconds:0} s.");
                }
            }

            VirtqueueState state = _queue.GetState();
            _stoppedState = state;
            _stop.Dispose();
            return state;
        }
    }

    public void Dispose() => Stop();

    private void Run()
    {
        try
        {
            // Buffers may already wait (a restart from a saved state): the driver will not kick for them.
            Drain();
            while (!_stopRequested)
            {
                if (!WaitForWork())
                {
                    break;
                }

                Drain();
            }

            if (_processor is not null)
            {
                Quiesce(_processor);
            }
        }
        catch (Exception ex)
        {
            ReportFault(ex);
        }
        finally
        {
            try
            {
                _processor?.Dispose();
            }
            catch (Exception ex)
            {
                ReportFault(ex);
            }
        }
    }

    /// <summary>Records the first error that stopped the worker and tells the observer once.</summary>
    private void ReportFault(Exception ex)
    {
        if (_fault is not null)
        {
            // The worker already reports why it stopped; a second failure (while waiting for I/O) adds nothing.
            return;
        }

        _fault = ex;
        Metrics?.Faulted();
        try
        {
            _onFault?.Invoke(ex);
        }
        catch
        {
            // A throwing fault observer must not take the process down with it.
        }
    }

    /// <summary>Sleeps until a kick, a completion (with requests in flight) or the poll interval; false when the worker must stop.</summary>
    private bool WaitForWork()
    {
        if (_processor is { WaitsForEvents: true } waiter)
        {
            QueueWake wake = waiter.WaitForWork(_kick, _stop, _kick is null ? _pollIntervalMilliseconds : Timeout.Infinite);
            if (wake == QueueWake.Kick)
            {
                Metrics?.Kicked();
            }

            return wake is QueueWake.Kick or QueueWake.Completions or QueueWake.Timeout;
        }

        SafeFileDescriptor? completions = _processor is { InFlight: > 0 } p ? p.CompletionHandle : null;
        if (_kick is null)
        {
            // 1: stop requested; 2: completions; -1: the interval passed (or the stop event is gone).
            int polled = EventFd.WaitAny(null, _stop, completions, _pollIntervalMilliseconds);
            return polled != 1 && !_stop.IsDisposed;
        }

        // 0: kicked; 2: completions; 1: stop requested; -1: the kick fd was closed under us, nothing more will come.
        int which = completions is null ? EventFd.WaitAny(_kick, _stop) : EventFd.WaitAny(_kick, _stop, completions);
        if (which == 0)
        {
            Metrics?.Kicked();
        }

        return which is 0 or 2;
    }

    private void Drain()
    {
        IDeviceQueue q = _queue;
        IQueueRequestProcessor? p = _processor;
        QueueMetrics? m = Metrics;
        do
        {
            q.DisableNotifications();
            while (!_stopRequested && q.TryPop(out DescriptorChain chain))
            {
                if (p is null)
                {
                    long started = m?.StartTimestamp() ?? 0;
                    uint written = _handler!(chain);

                    // A chain is a request; one the device wrote into brought data to the driver.
                    // Counted before the driver can see it complete, as the processors do.
                    m?.Completed(written > 0 ? RequestDirection.Read : RequestDirection.Other, written, started);
                    q.Complete(chain, written);
                }
                else if (p.Start(chain, out uint written))
                {
                    q.Complete(chain, written);
                }
            }

            if (p is not null)
            {
                // Hand the batch over, then take what already finished (page-cache hits may
                // complete during submission) before deciding whether to interrupt.
                p.Submit();
                p.Reap(q);
                m?.SetInFlight(p.InFlight);
            }

            if (q.NotifyIfNeeded())
            {
                m?.Interrupted();
            }

            if (_stopRequested)
            {
                return;
            }
        }
        while (q.EnableNotifications());
    }

    /// <summary>Stopping: no new chains, but every request in flight finishes and goes back to the driver.</summary>
    private void Quiesce(IQueueRequestProcessor p)
    {
        p.Submit();
        while (p.InFlight > 0)
        {
            p.WaitForCompletion();
            p.Reap(_queue);
        }

        Metrics?.SetInFlight(0);
        if (_queue.NotifyIfNeeded())
        {
            Metrics?.Interrupted();
        }
    }
}
