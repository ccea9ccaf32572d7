using Vmm.Core.Events;
using Vmm.Core.Memory;
using Vmm.Virtio.Metrics;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio;

/// <summary>
/// The common part of in-process virtio devices: feature bits, queue sizes, one
/// <see cref="VirtqueueWorker"/> thread per started queue, fault reporting and reset.
/// A device supplies its configuration space and either <see cref="ProcessRequest"/> (each
/// request finished on the spot) or <see cref="CreateRequestProcessor"/> (requests started as
/// they are popped and completed later, in any order).
/// </summary>
/// <remarks>
/// Control calls (start, stop, reset) come from the transport and are serialised here with a
/// lock; the data plane runs on each queue's worker without locks.
/// </remarks>
public abstract class VirtioDeviceBase : IVirtioDevice
{
    /// <summary>The ring features this layer implements; devices include them in their feature bits.</summary>
    public const ulong SupportedRingFeatures =
        VirtioFeatures.RING_INDIRECT_DESC | VirtioFeatures.RING_EVENT_IDX | VirtioFeatures.RING_PACKED;

    private readonly object _control = new();
    private readonly ushort _maxQueueSize;
    private readonly QueueSlot[] _queues;
    private bool _disposed;
    private string _metricsName;

    protected VirtioDeviceBase(VirtioDeviceId id, ulong deviceFeatures, int queueCount, ushort maxQueueSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(queueCount);
        ArgumentOutOfRangeException.ThrowIfZero(maxQueueSize);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(maxQueueSize, (ushort)VirtqueueLayout.MaxQueueSize);
        DeviceId = id;
        DeviceFeatures = deviceFeatures;
        QueueCount = queueCount;
        _maxQueueSize = maxQueueSize;
        _queues = new QueueSlot[queueCount];
        _metricsName = ShortName(id);
        for (int i = 0; i < queueCount; i++)
        {
            _queues[i] = new QueueSlot();
        }
    }

    public event Action? ConfigChanged;

    public event Action<DeviceFault>? Faulted;

    public VirtioDeviceId DeviceId { get; }

    public ulong DeviceFeatures { get; }

    public int QueueCount { get; }

    public abstract int ConfigSize { get; }

    /// <summary>
    /// The <c>device</c> tag of this device's queue metrics (<see cref="VmmMeters.BackendQueues"/>):
    /// the device type's short name unless the host names it (two devices of a type in one
    /// process need two names). Read when a queue starts.
    /// </summary>
    public string MetricsName
    {
        get => _metricsName;
        set
        {
            ArgumentException.ThrowIfNullOrEmpty(value);
            _metricsName = value;
        }
    }

    /// <summary>The features of the most recent <see cref="StartQueue"/> (the driver's accepted set).</summary>
    protected ulong NegotiatedFeatures { get; private set; }

    public virtual ushort GetMaxQueueSize(int index)
    {
        CheckIndex(index);
        return _maxQueueSize;
    }

    public abstract void ReadConfig(uint offset, Span<byte> data);

    public abstract void WriteConfig(uint offset, ReadOnlySpan<byte> data);

    /// <summary>Starts the queue on its own worker thread, stopping it first if it runs.</summary>
    /// <exception cref="VirtqueueException">The queue parameters break the spec's rules (size, alignment, areas outside memory).</exception>
    public void StartQueue(int index, VirtqueueResources resources, ulong features, VirtqueueState? initialState = null)
    {
        CheckIndex(index);
        ArgumentNullException.ThrowIfNull(resources);
        lock (_control)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            QueueSlot slot = _queues[index];
            StopSlot(slot);
            if (resources.Params.Size > GetMaxQueueSize(index))
            {
                throw new VirtqueueException(
                    $"Queue {index} size {resources.Params.Size} exceeds the device's maximum {GetMaxQueueSize(index)}.");
            }

            IDeviceQueue queue = DeviceQueue.Create(resources, features, initialState, resources.Inflight ?? CreateInflightTracker(index));
            GuestMemory memory = resources.Memory;
            EventFd? kick = resources.PollWithoutKick ? null : resources.Kick;
            NegotiatedFeatures = features;
            IQueueRequestProcessor? processor = CreateRequestProcessor(index, memory, resources.Params.Size);
            VirtqueueWorker worker = processor is null
                ? new VirtqueueWorker(QueueThreadName(index), queue, kick, chain => ProcessRequest(index, chain, memory), ex => ReportFault(index, ex)) { Metrics = GetQueueMetrics(index) }
                : new VirtqueueWorker(QueueThreadName(index), queue, kick, processor, ex => ReportFault(index, ex)) { Metrics = GetQueueMetrics(index) };
            slot.Worker = worker;
            slot.StoppedState = null;
            worker.Start();
        }
    }

    public VirtqueueState? StopQueue(int index)
    {
        CheckIndex(index);
        lock (_control)
        {
            QueueSlot slot = _queues[index];
            StopSlot(slot);
            return slot.StoppedState;
        }
    }

    public void Reset()
    {
        lock (_control)
        {
            foreach (QueueSlot slot in _queues)
            {
                StopSlot(slot);
                slot.StoppedState = null;
            }

            NegotiatedFeatures = 0;
            OnReset();
        }
    }

    public virtual byte[] SaveState() => [];

    public virtual void RestoreState(ReadOnlySpan<byte> state)
    {
    }

    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    /// <summary>
    /// Handles one request on queue <paramref name="queueIndex"/>'s worker thread; returns the bytes
    /// written into the chain's writable buffers. A <see cref="VirtqueueException"/> or
    /// <see cref="GuestMemoryException"/> (or any exception) stops the queue and raises <see cref="Faulted"/>.
    /// Used when <see cref="CreateRequestProcessor"/> returns null.
    /// </summary>
    protected virtual uint ProcessRequest(int queueIndex, DescriptorChain chain, GuestMemory memory) =>
        throw new NotSupportedException($"{GetType().Name} handles requests through a request processor.");

    /// <summary>
    /// The processor of queue <paramref name="queueIndex"/> for a device whose requests complete
    /// later and out of order (called at each start, on the control thread; the worker owns and
    /// disposes what it returns). Null, the default, means <see cref="ProcessRequest"/> finishes
    /// each request on the spot. A <see cref="VirtqueueException"/> refuses the start.
    /// </summary>
    protected virtual IQueueRequestProcessor? CreateRequestProcessor(int queueIndex, GuestMemory memory, ushort queueSize) => null;

    /// <summary>Called by <see cref="Reset"/> after every queue stopped: return device state to its initial values.</summary>
    protected virtual void OnReset()
    {
    }

    /// <summary>The inflight tracker for a queue being started (a vhost-user back-end supplies one); none by default.</summary>
    protected virtual IInflightTracker? CreateInflightTracker(int queueIndex) => null;

    /// <summary>Queue <paramref name="queueIndex"/>'s counters under <see cref="MetricsName"/>; a request processor counts its requests there.</summary>
    protected QueueMetrics GetQueueMetrics(int queueIndex) => VmmMeters.BackendQueues.Get(MetricsName, queueIndex);

    /// <summary>The worker thread's name, e.g. "vq-blk-0".</summary>
    protected virtual string QueueThreadName(int queueIndex) => $"vq-{ShortName(DeviceId)}-{queueIndex}";

    protected void RaiseConfigChanged() => ConfigChanged?.Invoke();

    protected void RaiseFaulted(DeviceFault fault) => Faulted?.Invoke(fault);

    protected virtual void Dispose(bool disposing)
    {
        if (!disposing)
        {
            return;
        }

        lock (_control)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            foreach (QueueSlot slot in _queues)
            {
                StopSlot(slot);
            }
        }
    }

    /// <summary>
    /// Raises <see cref="Faulted"/> off the worker thread: a subscriber that stops or resets the
    /// device must not block on a control call that is itself joining this worker. A fault of a
    /// worker the queue no longer runs (stopped or reset meanwhile, maybe for the next front-end)
    /// is not reported: it belongs to a session that is over. Nothing a subscriber throws
    /// escapes onto the pool thread, where it would end the process.
    /// </summary>
    private void ReportFault(int index, Exception ex) =>
        ThreadPool.QueueUserWorkItem(_ =>
        {
            lock (_control)
            {
                // The worker records its fault before it reports it: the slot's worker is the
                // faulting one exactly when its Fault is this exception.
                if (_disposed || !ReferenceEquals(_queues[index].Worker?.Fault, ex))
                {
                    return;
                }
            }

            try
            {
                RaiseFaulted(new DeviceFault(index, ex.Message, ex));
            }
            catch (Exception observerFailure)
            {
                System.Diagnostics.Trace.TraceError($"A Faulted subscriber of queue {index} failed: {observerFailure}");
            }
        });

    private static void StopSlot(QueueSlot slot)
    {
        if (slot.Worker is { } worker)
        {
            // Throws TimeoutException when the worker is stuck: the slot keeps it, so nothing
            // treats the queue as stopped (and its memory as free) while the thread may run.
            slot.StoppedState = worker.Stop();
            slot.Worker = null;
        }
    }

    private static string ShortName(VirtioDeviceId id) => id switch
    {
        VirtioDeviceId.Block => "blk",
        VirtioDeviceId.Net => "net",
        VirtioDeviceId.Entropy => "rng",
        VirtioDeviceId.Console => "console",
        VirtioDeviceId.FileSystem => "fs",
        VirtioDeviceId.Socket => "vsock",
        _ => ((int)id).ToString(System.Globalization.CultureInfo.InvariantCulture),
    };

    private void CheckIndex(int index)
    {
        if ((uint)index >= (uint)QueueCount)
        {
            throw new ArgumentOutOfRangeException(nameof(index), index, $"The device has {QueueCount} queues.");
        }
    }

    private sealed class QueueSlot
    {
        public VirtqueueWorker? Worker { get; set; }

        public VirtqueueState? StoppedState { get; set; }
    }
}
