using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Core.Memory;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Transport;

/// <summary>One queue's transport-side registers.</summary>
internal sealed class TransportQueue : IDisposable
{
    public TransportQueue(ushort maxSize)
    {
        MaxSize = maxSize;
        Size = maxSize;
    }

    public ushort MaxSize { get; }

    public ushort Size { get; set; }

    public ulong DescriptorArea { get; set; }

    public ulong DriverArea { get; set; }

    public ulong DeviceArea { get; set; }

    public bool Ready { get; set; }

    public ushort MsixVector { get; set; } = VirtioPciLayout.NoVector;

    /// <summary>The queue's kick: a QueueNotify write signals it and the device's worker waits on it.</summary>
    public EventFd Kick { get; } = new();

    /// <summary>Back to the reset values (virtio 1.2, 4.2.2.1: QueueNum defaults to QueueNumMax, addresses 0).</summary>
    public void Clear()
    {
        Size = MaxSize;
        DescriptorArea = 0;
        DriverArea = 0;
        DeviceArea = 0;
        Ready = false;
        MsixVector = VirtioPciLayout.NoVector;
    }

    public void Dispose() => Kick.Dispose();
}

/// <summary>
/// What the MMIO and PCI register models share: feature negotiation, the status state machine,
/// queue start/stop, configuration generation and the device's fault reports. Register
/// writes arrive under <see cref="Lock"/>; the device's events arrive on its own threads and
/// use only interlocked state, so a device that stops a worker while the lock is held cannot
/// deadlock against that worker's fault report.
/// </summary>
internal sealed class VirtioTransportCore : IDisposable
{
    private readonly Func<int, InterruptLine> _queueInterrupt;
    private readonly Action _configInterrupt;
    private readonly Action<string> _log;
    private int _status;
    private int _configGeneration;
    private bool _disposed;

    public VirtioTransportCore(
        IVirtioDevice device,
        GuestMemory memory,
        Func<int, InterruptLine> queueInterrupt,
        Action configInterrupt,
        Action<string> log)
    {
        Device = device ?? throw new ArgumentNullException(nameof(device));
        Memory = memory ?? throw new ArgumentNullException(nameof(memory));
        _queueInterrupt = queueInterrupt;
        _configInterrupt = configInterrupt;
        _log = log;
        Queues = new TransportQueue[device.QueueCount];
        for (int i = 0; i < Queues.Length; i++)
        {
            Queues[i] = new TransportQueue(device.GetMaxQueueSize(i));
        }

        device.ConfigChanged += OnConfigChanged;
        device.Faulted += OnFaulted;
    }

    public object Lock { get; } = new();

    public IVirtioDevice Device { get; }

    public GuestMemory Memory { get; }

    public TransportQueue[] Queues { get; }

    /// <summary>The device's features plus VERSION_1, which only the transport adds (virtio 1.2, 6).</summary>
    public ulong OfferedFeatures => Device.DeviceFeatures | VirtioFeatures.VERSION_1;

    /// <summary>What the driver accepted so far; final once FEATURES_OK is set.</summary>
    public ulong DriverFeatures { get; private set; }

    public VirtioDeviceStatus Status => (VirtioDeviceStatus)(byte)Volatile.Read(ref _status);

    public uint ConfigGeneration => (uint)Volatile.Read(ref _configGeneration);

    public uint ReadDeviceFeatures(uint select) => select switch
    {
        0 => (uint)OfferedFeatures,
        1 => (uint)(OfferedFeatures >> 32),
        _ => 0,
    };

    /// <summary>
    /// Stores one 32-bit window of the driver's features, masked to what was offered: the driver
    /// must not accept a feature the device did not offer (virtio 1.2, 2.2.1). Once FEATURES_OK is
    /// set the set is final (3.1.1 step 5), so later writes are ignored.
    /// </summary>
    public void WriteDriverFeatures(uint select, uint value)
    {
        if ((Status & VirtioDeviceStatus.FEATURES_OK) != 0)
        {
            _log($"driver feature write (select {select}, 0x{value:x8}) after FEATURES_OK ignored");
            return;
        }

        if (select > 1)
        {
            if (value != 0)
            {
                _log($"driver feature write to select {select} ignored: no features defined there");
            }

            return;
        }

        int shift = (int)select * 32;
        ulong window = 0xffff_ffffUL << shift;
        ulong accepted = ((ulong)value << shift) & OfferedFeatures;
        if (((ulong)value << shift) != accepted)
        {
            _log($"driver accepted features not offered: 0x{((ulong)value << shift) & ~accepted:x16} dropped");
        }

        DriverFeatures = (DriverFeatures & ~window) | accepted;
    }

    public uint ReadDriverFeatures(uint select) => select switch
    {
        0 => (uint)DriverFeatures,
        1 => (uint)(DriverFeatures >> 32),
        _ => 0,
    };

    /// <summary>
    /// The driver's status write (virtio 1.2, 2.1 and 3.1.1). Zero resets. FEATURES_OK is kept
    /// only when the accepted set is one this device can serve: it must include VERSION_1,
    /// since this transport has no legacy interface (2.2.3 / 6.1). DEVICE_NEEDS_RESET belongs to the
    /// device: the driver can neither set nor clear it.
    /// </summary>
    public void WriteStatus(byte value)
    {
        ApplyStatus(value);
        Device.DriverStatusChanged(Status & ~VirtioDeviceStatus.DEVICE_NEEDS_RESET);
    }

    private void ApplyStatus(byte value)
    {
        if (value == 0)
        {
            Reset();
            return;
        }

        var requested = (VirtioDeviceStatus)value & ~VirtioDeviceStatus.DEVICE_NEEDS_RESET;
        VirtioDeviceStatus current = Status;
        if ((requested & VirtioDeviceStatus.FEATURES_OK) != 0 && (current & VirtioDeviceStatus.FEATURES_OK) == 0)
        {
            if ((DriverFeatures & VirtioFeatures.VERSION_1) == 0)
            {
                _log("FEATURES_OK refused: the driver did not accept VERSION_1");
                requested &= ~VirtioDeviceStatus.FEATURES_OK;
            }
        }

        int old;
        int updated;
        do
        {
            old = Volatile.Read(ref _status);
            updated = (int)requested | (old & (int)VirtioDeviceStatus.DEVICE_NEEDS_RESET);
        }
        while (Interlocked.CompareExchange(ref _status, updated, old) != old);
    }

    /// <summary>Device reset (virtio 1.2, 2.4): the device stops every queue, the transport forgets the driver's set-up.</summary>
    public void Reset()
    {
        Device.Reset();
        foreach (TransportQueue q in Queues)
        {
            q.Clear();
        }

        DriverFeatures = 0;
        Volatile.Write(ref _status, 0);
    }

    /// <summary>
    /// QueueReady / queue_enable = 1: hands the queue to the device. Refused (logged, queue stays not
    /// ready) when features are not final yet (3.1.1: queues are set up after FEATURES_OK) or the
    /// size is not one the device accepts (2.7: a split ring's size is a power of two).
    /// </summary>
    public bool EnableQueue(int index)
    {
        TransportQueue q = Queues[index];
        if (q.Ready)
        {
            return true;
        }

        if ((Status & VirtioDeviceStatus.FEATURES_OK) == 0)
        {
            _log($"queue {index} enabled before FEATURES_OK: refused");
            return false;
        }

        bool packed = (DriverFeatures & VirtioFeatures.RING_PACKED) != 0;
        if (q.Size == 0 || q.Size > q.MaxSize || (!packed && (q.Size & (q.Size - 1)) != 0))
        {
            _log($"queue {index} size {q.Size} invalid (max {q.MaxSize}, {(packed ? "packed" : "split")}): refused");
            return false;
        }

        var resources = new VirtqueueResources(
            new VirtqueueParams(q.Size, q.DescriptorArea, q.DriverArea, q.DeviceArea),
            Memory,
            q.Kick,
            _queueInterrupt(index));
        try
        {
            Device.StartQueue(index, resources, DriverFeatures);
        }
        catch (Exception e) when (e is VirtqueueException or ArgumentException or InvalidOperationException or GuestMemoryException)
        {
            // The ring the driver programmed is unusable (outside guest memory, say): the device
            // cannot go on without a reset (virtio 1.2, 2.1.2).
            MarkNeedsReset($"queue {index} could not start: {e.Message}");
            return false;
        }

        q.Ready = true;
        return true;
    }

    public void DisableQueue(int index)
    {
        TransportQueue q = Queues[index];
        if (q.Ready)
        {
            Device.StopQueue(index);
            q.Ready = false;
        }
    }

    /// <summary>virtio 1.2, 2.6.1 "Virtqueue Reset": stop the queue and return its registers to their defaults.</summary>
    public void ResetQueue(int index)
    {
        DisableQueue(index);
        Queues[index].Clear();
    }

    /// <summary>A driver notification: signals the kick eventfd the device's worker waits on, without any hop.</summary>
    public void Notify(uint index)
    {
        if (index < (uint)Queues.Length)
        {
            Queues[index].Kick.Signal();
        }
        else
        {
            _log($"notify of queue {index} ignored: the device has {Queues.Length}");
        }
    }

    public bool WriteQueueField(int index, string what)
    {
        if (Queues[index].Ready)
        {
            // virtio 1.2, 4.2.2.3 / 4.1.4.3.2: the driver must not change a queue while it is ready.
            _log($"write to {what} of ready queue {index} ignored");
            return false;
        }

        return true;
    }

    public void MarkNeedsReset(string reason)
    {
        _log($"device needs reset: {reason}");
        Interlocked.Or(ref _status, (int)VirtioDeviceStatus.DEVICE_NEEDS_RESET);
        _configInterrupt();
    }

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        Device.ConfigChanged -= OnConfigChanged;
        Device.Faulted -= OnFaulted;
        foreach (TransportQueue q in Queues)
        {
            q.Dispose();
        }
    }

    private void OnConfigChanged()
    {
        // virtio 1.2, 2.5.1: the generation changes whenever the configuration may have changed,
        // so a driver reading across the change retries.
        Interlocked.Increment(ref _configGeneration);
        _configInterrupt();
    }

    private void OnFaulted(DeviceFault fault) =>
        MarkNeedsReset($"queue {fault.QueueIndex}: {fault.Reason}");
}
