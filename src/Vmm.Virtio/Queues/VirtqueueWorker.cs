using Vmm.Core.Events;
using Vmm.Core.Memory;

namespace Vmm.Virtio.Queues;

/// <summary>Handles one chain on the worker thread; returns the bytes written into its writable buffers.</summary>
public delegate uint VirtqueueHandler(DescriptorChain chain);

/// <summary>
/// Runs one virtqueue on a dedicated thread (STACK.md section 4: a blocked thread is the fastest
/// eventfd wake-up here). Each kick drains the ring with notifications disabled, completes every
/// chain, sends at most one interrupt per batch, then re-enables notifications and drains again
/// if buffers arrived meanwhile (2.7.10 / 2.8.10). Without a kick fd (vhost-user NOFD) it polls.
/// </summary>
/// <remarks>
/// A malformed ring (<see cref="VirtqueueException"/>, <see cref="GuestMemoryException"/>) or any
/// other exception stops the worker and is reported through the fault callback; nothing escapes
/// the thread. Control calls (<see cref="Start"/>, <see cref="Stop"/>) may come from any thread.
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
    private readonly VirtqueueHandler _handler;
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
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(pollIntervalMilliseconds);
        _queue = queue ?? throw new ArgumentNullException(nameof(queue));
        _handler = handler ?? throw new ArgumentNullException(nameof(handler));
        _kick = kick;
        _onFault = onFault;
        _pollIntervalMilliseconds = pollIntervalMilliseconds;
        _thread = new Thread(Run) { IsBackground = true, Name = name };
    }

    public IDeviceQueue Queue => _queue;

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
    /// Stops the thread (the chain in hand completes first) and returns the queue's state, read
    /// after the thread ended. Idempotent: later calls return the same state.
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
                if (_kick is null)
                {
                    if (_stop.Wait(_pollIntervalMilliseconds))
                    {
                        break;
                    }
                }
                else
                {
                    int which = EventFd.WaitAny(_kick, _stop);
                    if (which != 0)
                    {
                        // 1: stop requested; -1: the kick fd was closed under us, nothing more will come.
                        break;
                    }
                }

                Drain();
            }
        }
        catch (Exception ex)
        {
            _fault = ex;
            try
            {
                _onFault?.Invoke(ex);
            }
            catch
            {
                // A throwing fault observer must not take the process down with it.
            }
        }
    }

    private void Drain()
    {
        IDeviceQueue q = _queue;
        do
        {
            q.DisableNotifications();
            while (!_stopRequested && q.TryPop(out DescriptorChain chain))
            {
                uint written = _handler(chain);
                q.Complete(chain, written);
            }

            q.NotifyIfNeeded();
            if (_stopRequested)
            {
                return;
            }
        }
        while (q.EnableNotifications());
    }
}
