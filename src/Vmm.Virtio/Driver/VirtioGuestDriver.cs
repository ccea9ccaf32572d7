using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Core.Machine;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Driver;

/// <summary>
/// The generic guest driver: initialises a virtio device through its transport's registers the
/// way Linux does (virtio 1.2, 3.1.1 "Driver Requirements: Device Initialization"), sets up its
/// queues, and delivers interrupts to per-queue waits. It never calls the device: only the bus.
/// </summary>
/// <remarks>
/// Interrupts: with MSI-X (one entry for configuration changes, one per queue, as Linux's
/// vp_find_vqs_msix asks first) the driver allocates a vector per entry, programs and unmasks
/// the entries as Linux does, and each queue's wait sleeps on its vector's eventfd directly
/// while a small thread serves the configuration vector. <see cref="MaskQueueVector"/> and
/// <see cref="SetFunctionMask"/> mask at run time, as Linux does on affinity changes. With one
/// shared interrupt (virtio-mmio, or PCI without MSI-X) that thread is the interrupt handler:
/// it reads and acknowledges the interrupt status and wakes the queues or handles the
/// configuration change, as Linux's vm_interrupt / vp_interrupt do.
/// </remarks>
public sealed class VirtioGuestDriver : IDisposable
{
    private readonly IDriverTransport _transport;
    private readonly IDriverQueueFactory _queueFactory;
    private readonly GuestInterruptEvents _interrupts;
    private readonly object _lifecycle = new();
    private readonly object _msixControl = new();
    private readonly List<EventFd> _localWakes = [];
    private IReadOnlyList<int>? _msixVectors;
    private VirtioDriverQueue[] _queues = [];
    private EventFd? _stop;
    private Thread? _irqThread;
    private int _needsResetRaised;
    private bool _disposed;

    public VirtioGuestDriver(MmioBus bus, VirtioDeviceLocation location, IDriverQueueFactory queueFactory, GuestInterruptEvents interrupts, VirtioDriverOptions options)
        : this(CreateTransport(bus, location), queueFactory, interrupts, options)
    {
        Location = location;
    }

    internal VirtioGuestDriver(IDriverTransport transport, IDriverQueueFactory queueFactory, GuestInterruptEvents interrupts, VirtioDriverOptions options)
    {
        _transport = transport;
        _queueFactory = queueFactory ?? throw new ArgumentNullException(nameof(queueFactory));
        _interrupts = interrupts ?? throw new ArgumentNullException(nameof(interrupts));
        Options = options ?? throw new ArgumentNullException(nameof(options));
    }

    public VirtioDeviceLocation? Location { get; }

    public VirtioDriverOptions Options { get; }

    /// <summary>What the device offered (valid after <see cref="Initialize"/>).</summary>
    public ulong DeviceFeatures { get; private set; }

    /// <summary>What was negotiated: the features FEATURES_OK sealed.</summary>
    public ulong NegotiatedFeatures { get; private set; }

    public IReadOnlyList<VirtioDriverQueue> Queues => _queues;

    public bool IsRunning { get; private set; }

    /// <summary>Raised on the interrupt thread when the device's configuration changed.</summary>
    public event Action? ConfigChanged;

    /// <summary>
    /// Raised once (until the next initialisation) when the device set DEVICE_NEEDS_RESET (virtio
    /// 1.2, 2.1.2); the owner decides when to call <see cref="ResetAndReinitialize"/>.
    /// </summary>
    public event Action? DeviceNeedsReset;

    /// <summary>Whether the queues' interrupts are MSI-X vectors (valid after <see cref="Initialize"/>).</summary>
    public bool UsesMsix { get; private set; }

    /// <summary>
    /// Masks (or unmasks) queue <paramref name="queue"/>'s MSI-X vector: its table entry's mask
    /// bit (PCI 3.0 §6.8.2.9). While masked the device's interrupts for it are held pending and
    /// the queue's waits do not wake; the unmask delivers one if any came. Safe to call from any
    /// thread while the queues run.
    /// </summary>
    /// <exception cref="InvalidOperationException">The queues do not use MSI-X.</exception>
    public void MaskQueueVector(int queue, bool masked)
    {
        VirtioDriverQueue[] queues = _queues;
        if (!UsesMsix)
        {
            throw new InvalidOperationException($"{_transport.Name}: the queues do not use MSI-X vectors.");
        }

        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)queue, (uint)queues.Length, nameof(queue));
        _transport.MaskMsixEntry(queue + 1, masked);
    }

    /// <summary>Sets or clears the MSI-X function mask: every vector of the device masked at once (PCI 3.0 §6.8.2.3).</summary>
    /// <exception cref="InvalidOperationException">The device does not use MSI-X.</exception>
    public void SetFunctionMask(bool masked)
    {
        if (!UsesMsix)
        {
            throw new InvalidOperationException($"{_transport.Name}: the device does not use MSI-X.");
        }

        lock (_msixControl)
        {
            _transport.MaskMsixFunction(masked);
        }
    }

    /// <summary>The device status register as the device reports it now.</summary>
    public VirtioDeviceStatus ReadStatus() => (VirtioDeviceStatus)_transport.ReadStatus();

    /// <summary>
    /// Runs the initialisation sequence (3.1.1): reset, ACKNOWLEDGE, DRIVER, features,
    /// FEATURES_OK (re-read), queues, DRIVER_OK. On a device that refuses, sets FAILED and throws
    /// <see cref="VirtioDriverException"/>.
    /// </summary>
    public void Initialize()
    {
        lock (_lifecycle)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            StopInterruptHandling();
            Reset();

            var status = VirtioDeviceStatus.ACKNOWLEDGE;
            _transport.WriteStatus((byte)status);
            status |= VirtioDeviceStatus.DRIVER;
            _transport.WriteStatus((byte)status);

            DeviceFeatures = _transport.ReadDeviceFeatures();
            if ((DeviceFeatures & VirtioFeatures.VERSION_1) == 0)
            {
                Fail(status, "the device does not offer VERSION_1 (a legacy-only device)");
            }

            NegotiatedFeatures = DeviceFeatures & Options.WantedFeatures;
            _transport.WriteDriverFeatures(NegotiatedFeatures);
            status |= VirtioDeviceStatus.FEATURES_OK;
            _transport.WriteStatus((byte)status);

            // 3.1.1 step 6: re-read; a device that cannot serve this subset leaves FEATURES_OK clear.
            if (((VirtioDeviceStatus)_transport.ReadStatus() & VirtioDeviceStatus.FEATURES_OK) == 0)
            {
                Fail(status, $"the device refused FEATURES_OK for features 0x{NegotiatedFeatures:x16}");
            }

            SetUpQueues(status);

            status |= VirtioDeviceStatus.DRIVER_OK;
            _transport.WriteStatus((byte)status);
            Volatile.Write(ref _needsResetRaised, 0);
            IsRunning = true;
        }
    }

    /// <summary>Resets the device and runs <see cref="Initialize"/> again, with new queues.</summary>
    public void ResetAndReinitialize() => Initialize();

    /// <summary>
    /// Reads device configuration consistently: retries while the configuration generation
    /// changes across the read (virtio 1.2, 2.5.1 and 4.2.2.3).
    /// </summary>
    public void ReadConfig(uint offset, Span<byte> data)
    {
        for (int attempt = 0; attempt < 1000; attempt++)
        {
            uint before = _transport.ReadConfigGeneration();
            _transport.ReadConfig(offset, data);
            if (_transport.ReadConfigGeneration() == before)
            {
                return;
            }
        }

        throw new VirtioDriverException($"{_transport.Name}: configuration kept changing while being read.");
    }

    public void WriteConfig(uint offset, ReadOnlySpan<byte> data) => _transport.WriteConfig(offset, data);

    /// <summary>Writes status 0 (the device stops every queue) and stops waiting for interrupts.</summary>
    public void Shutdown()
    {
        lock (_lifecycle)
        {
            if (_disposed)
            {
                return;
            }

            StopInterruptHandling();
            _transport.WriteStatus(0);
            if (UsesMsix)
            {
                lock (_msixControl)
                {
                    _transport.DisableMsix();
                }

                UsesMsix = false;
            }

            IsRunning = false;
        }
    }

    public void Dispose()
    {
        Shutdown();
        lock (_lifecycle)
        {
            _disposed = true;
            if (_msixVectors is not null)
            {
                _interrupts.FreeVectors(_msixVectors);
                _msixVectors = null;
            }
        }
    }

    private static IDriverTransport CreateTransport(MmioBus bus, VirtioDeviceLocation location)
    {
        ArgumentNullException.ThrowIfNull(bus);
        ArgumentNullException.ThrowIfNull(location);
        return location.Kind switch
        {
            VirtioTransportKind.Mmio => new MmioDriverTransport(bus, location.Address, location.Irq),
            VirtioTransportKind.Pci => new PciDriverTransport(bus, location.Address),
            _ => throw new ArgumentOutOfRangeException(nameof(location)),
        };
    }

    private void Reset()
    {
        // 4.2.3.1 / 4.1.4.3.2: write 0, then wait for the status to read back 0.
        _transport.WriteStatus(0);
        long deadline = Environment.TickCount64 + (long)Options.ResetTimeout.TotalMilliseconds;
        while (_transport.ReadStatus() != 0)
        {
            if (Environment.TickCount64 > deadline)
            {
                throw new VirtioDriverException($"{_transport.Name}: the device did not complete its reset within {Options.ResetTimeout}.");
            }

            Thread.Sleep(1);
        }

        IsRunning = false;
    }

    private void SetUpQueues(VirtioDeviceStatus status)
    {
        int available = _transport.QueueCount;
        int count = Math.Min(available, Options.QueueCount ?? available);
        if (count == 0)
        {
            Fail(status, "the device has no queues");
        }

        if (Options.QueueSize == 0)
        {
            Fail(status, "the wanted queue size is 0");
        }

        _stop = new EventFd();
        IReadOnlyList<int>? vectors = SetUpMsix(count);
        if (vectors is null && _transport.SharedIrq < 0)
        {
            Fail(status, "the device has neither MSI-X vectors for every queue nor a shared interrupt");
        }

        bool packed = (NegotiatedFeatures & VirtioFeatures.RING_PACKED) != 0;
        var queues = new VirtioDriverQueue[count];
        for (int i = 0; i < count; i++)
        {
            ushort max = _transport.ReadQueueMaxSize(i);
            if (max == 0)
            {
                Fail(status, $"queue {i} is not available");
            }

            ushort size = Math.Min(max, Options.QueueSize);
            if (!packed)
            {
                // 2.7: split ring sizes are powers of two.
                size = (ushort)(1 << (31 - int.LeadingZeroCount(size)));
            }

            IDriverQueue queue = _queueFactory.Create(i, size, NegotiatedFeatures);
            if (queue.Size != size)
            {
                Fail(status, $"queue {i} was made with size {queue.Size}, not {size}");
            }

            EventFd wake;
            int vector;
            if (vectors is not null)
            {
                vector = vectors[i + 1];
                wake = _interrupts.Get(vector);
                _transport.SetupQueue(i, queue.Params, (ushort)(i + 1));

                // The queue's interrupt is wanted now: its entry is unmasked (request_irq). A completion
                // the device raised before this was held pending and arrives now.
                _transport.MaskMsixEntry(i + 1, false);
            }
            else
            {
                vector = _transport.SharedIrq;
                wake = new EventFd();
                _localWakes.Add(wake);
                _transport.SetupQueue(i, queue.Params, null);
            }

            if (!_transport.IsQueueReady(i))
            {
                Fail(status, $"queue {i} did not become ready");
            }

            queues[i] = new VirtioDriverQueue(i, queue, _transport, wake, _stop, vector);
        }

        _queues = queues;
        StartInterruptHandling(vectors);
    }

    /// <summary>
    /// MSI-X as Linux's vp_request_msix_vectors sets it up: a vector per entry (configuration,
    /// then one per queue), the entries programmed (x86 message, data = vector) and left masked,
    /// then the configuration entry unmasked and mapped. Null when the function has too few
    /// entries: the shared interrupt is used instead.
    /// </summary>
    private IReadOnlyList<int>? SetUpMsix(int queueCount)
    {
        UsesMsix = false;
        if (_transport.MsixTableSize < queueCount + 1)
        {
            return null;
        }

        if (_msixVectors?.Count != queueCount + 1)
        {
            if (_msixVectors is not null)
            {
                _interrupts.FreeVectors(_msixVectors);
                _msixVectors = null;
            }

            _msixVectors = _interrupts.AllocateVectors(queueCount + 1);
        }

        IReadOnlyList<int> vectors = _msixVectors;
        foreach (int v in vectors)
        {
            // The guest's eventfd exists before its entry can fire.
            _interrupts.Get(v);
        }

        lock (_msixControl)
        {
            _transport.EnableMsix([.. vectors.Select(MsiMessage.X86)]);
        }

        _transport.MaskMsixEntry(0, false);
        _transport.SetConfigMsixVector(0);
        UsesMsix = true;
        return vectors;
    }

    private void StartInterruptHandling(IReadOnlyList<int>? vectors)
    {
        EventFd stop = _stop!;
        EventFd irq = _interrupts.Get(vectors is null ? _transport.SharedIrq : vectors[0]);
        bool shared = vectors is null;
        _irqThread = new Thread(() => InterruptLoop(irq, stop, shared))
        {
            IsBackground = true,
            Name = $"{_transport.Name} irq",
        };
        _irqThread.Start();
    }

    private void InterruptLoop(EventFd irq, EventFd stop, bool shared)
    {
        while (EventFd.WaitAny(irq, stop) == 0)
        {
            uint reasons = _transport.ReadAndAckInterruptStatus();
            if (shared && (reasons & VirtioMmioRegisters.InterruptUsedBuffer) != 0)
            {
                foreach (VirtioDriverQueue q in _queues)
                {
                    q.WakeFromSharedInterrupt();
                }
            }

            // A dedicated config vector needs no reason bit; the shared line says so in bit 1.
            if (!shared || (reasons & VirtioMmioRegisters.InterruptConfigChange) != 0)
            {
                HandleConfigInterrupt();
            }
        }
    }

    private void HandleConfigInterrupt()
    {
        if ((ReadStatus() & VirtioDeviceStatus.DEVICE_NEEDS_RESET) != 0)
        {
            if (Interlocked.Exchange(ref _needsResetRaised, 1) == 0)
            {
                DeviceNeedsReset?.Invoke();
            }

            return;
        }

        ConfigChanged?.Invoke();
    }

    private void StopInterruptHandling()
    {
        // Disposing the stop eventfd wakes every wait on it for good: the irq thread and any
        // queue waits end, and return false.
        _stop?.Dispose();
        if (_irqThread is not null && _irqThread != Thread.CurrentThread)
        {
            _irqThread.Join(TimeSpan.FromSeconds(5));
        }

        _irqThread = null;
        _stop = null;
        foreach (EventFd e in _localWakes)
        {
            e.Dispose();
        }

        _localWakes.Clear();
        _queues = [];
    }

    private void Fail(VirtioDeviceStatus status, string reason)
    {
        // 3.1.1: a driver that gives up sets FAILED.
        _transport.WriteStatus((byte)(status | VirtioDeviceStatus.FAILED));
        StopInterruptHandling();
        throw new VirtioDriverException($"{_transport.Name}: {reason}.");
    }
}
