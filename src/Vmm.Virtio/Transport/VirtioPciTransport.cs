using System.Buffers.Binary;
using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Core.Machine;
using Vmm.Core.Memory;
using Vmm.Virtio.Spec;
using L = Vmm.Virtio.Spec.VirtioPciLayout;

namespace Vmm.Virtio.Transport;

/// <summary>
/// virtio-pci modern (virtio 1.2, 4.1) as a register model. The transport itself is BAR0, an
/// <see cref="IMmioDevice"/> window of <see cref="VirtioPciLayout.Bar0Size"/> bytes: common
/// configuration at 0x0000, ISR at 0x1000, device configuration at 0x2000, notifications at 0x3000
/// (queue n at 0x3000 + 4n), and the MSI-X table and PBA at 0x4000 and 0x5000.
/// <see cref="ConfigSpace"/> is the function's PCI configuration header with the capability list
/// a driver walks to find those structures (4.1.4).
/// </summary>
/// <remarks>
/// <para>Interrupts: the MSI-X table and PBA are real (<see cref="MsixTable"/>, PCI 3.0 §6.8.2):
/// the driver programs each entry's message and masks entries or the whole function, and the
/// owner's route turns a message into the VM's line. With MSI-X enabled the ISR is not involved
/// (virtio 1.2 §4.1.4.5); without it the transport falls back to the ISR plus the optional INTx line.</para>
/// <para>Each queue has one line for the transport's lifetime (a <see cref="ForwardingInterruptLine"/>),
/// handed to the device at every start. It follows the queue's <c>queue_msix_vector</c> to that
/// entry's line, the ISR path while MSI-X is disabled, or nothing for NO_VECTOR (§4.1.5.3). The
/// driver may change <c>queue_msix_vector</c> on an enabled queue: virtio 1.2 §4.1.5.1.2 makes
/// every write a mapping the device must support, and §4.1.4.3.2 asks only that the other queue
/// fields be set before <c>queue_enable</c> (QEMU allows it too). The line then retargets and
/// raises <see cref="InterruptLine.RoutingChanged"/>, as it does when its entry is masked or
/// unmasked: a vhost-user front-end re-routes the back-end's call fd on that event.
/// RoutingChanged handlers run under the transport's lock on the writing vCPU thread: they must
/// not call back into the transport.</para>
/// </remarks>
public sealed class VirtioPciTransport : IMmioDevice, IDisposable
{
    private const int CapCommon = 0x40;
    private const int CapNotify = CapCommon + L.CapSize;
    private const int CapIsr = CapNotify + L.NotifyCapSize;
    private const int CapDevice = CapIsr + L.CapSize;
    private const int CapPciCfg = CapDevice + L.CapSize;
    private const int CapMsix = CapPciCfg + L.PciCfgCapSize;
    private const int HeaderSize = 0x100;

    private readonly VirtioTransportCore _core;
    private readonly MsixTable _msix;
    private readonly ForwardingInterruptLine[] _queueLines;
    private readonly InterruptLine? _intx;
    private readonly InterruptLine _isrQueueLine;
    private readonly PciConfigSpace _configSpace;
    private int _isr;
    private uint _deviceFeatureSelect;
    private uint _driverFeatureSelect;
    private ushort _queueSelect;
    private ushort _configMsixVector = L.NoVector;

    /// <param name="device">The device behind the transport.</param>
    /// <param name="memory">The guest RAM its rings live in.</param>
    /// <param name="bar0Address">Where the owner mapped BAR0; the BAR register reports it.</param>
    /// <param name="msixTableSize">How many MSI-X table entries the function has (0: no MSI-X capability).</param>
    /// <param name="msiRoute">
    /// The platform's MSI routing: the VM's line a programmed message reaches, or null when it
    /// reaches none. Called under the transport's lock whenever an entry's message changes.
    /// </param>
    /// <param name="intx">The legacy interrupt used while MSI-X is disabled; null for none.</param>
    public VirtioPciTransport(
        IVirtioDevice device,
        GuestMemory memory,
        ulong bar0Address,
        int msixTableSize,
        Func<MsiMessage, InterruptLine?> msiRoute,
        InterruptLine? intx = null)
    {
        ArgumentNullException.ThrowIfNull(msiRoute);
        if (msixTableSize is < 0 or > MaxMsixTableSize)
        {
            throw new ArgumentOutOfRangeException(nameof(msixTableSize), $"The MSI-X table region holds 0 to {MaxMsixTableSize} entries.");
        }

        if ((bar0Address & (L.Bar0Size - 1)) != 0)
        {
            throw new ArgumentException("BAR0 must be aligned to its size.", nameof(bar0Address));
        }

        if (intx is not null && (intx.Vector < 0 || intx.Vector > 254))
        {
            throw new ArgumentOutOfRangeException(nameof(intx), "The INTx line's vector must fit the Interrupt Line register (0 to 254).");
        }

        Bar0Address = bar0Address;
        _intx = intx;
        _isrQueueLine = new FunctionBackedInterruptLine(intx?.Vector ?? -1, _ => RaiseIsr(L.IsrQueue));
        _msix = new MsixTable(msixTableSize, msiRoute, Log);
        _core = new VirtioTransportCore(device, memory, QueueLine, RaiseConfigInterrupt, Log);
        _queueLines = new ForwardingInterruptLine[_core.Queues.Length];
        for (int i = 0; i < _queueLines.Length; i++)
        {
            _queueLines[i] = new ForwardingInterruptLine(QueueTarget(i));
        }

        _configSpace = new PciConfigSpace(this);
    }

    /// <summary>The most MSI-X entries BAR0's 4 KiB table region holds.</summary>
    public const int MaxMsixTableSize = (int)(L.Bar0RegionSize / L.MsixEntrySize);

    public event Action<string>? Diagnostic;

    public IVirtioDevice Device => _core.Device;

    public ulong Bar0Address { get; }

    /// <summary>The PCI configuration header (4 KiB, as one function of an ECAM window).</summary>
    public IMmioDevice ConfigSpace => _configSpace;

    public ulong OfferedFeatures => _core.OfferedFeatures;

    public ulong DriverFeatures => _core.DriverFeatures;

    public VirtioDeviceStatus Status => _core.Status;

    public uint ConfigGeneration => _core.ConfigGeneration;

    /// <summary>Whether the driver enabled MSI-X in the capability's message control.</summary>
    public bool MsixEnabled
    {
        get
        {
            lock (_core.Lock)
            {
                return _msix.Enabled;
            }
        }
    }

    /// <summary>Whether the driver set the MSI-X function mask (every entry masked).</summary>
    public bool MsixFunctionMasked
    {
        get
        {
            lock (_core.Lock)
            {
                return _msix.FunctionMasked;
            }
        }
    }

    /// <summary>The line of each MSI-X table entry: masked, pending and routed as the driver programmed the table.</summary>
    public IReadOnlyList<InterruptLine> MsixVectors => _msix.Lines;

    /// <summary>The message MSI-X entry <paramref name="entry"/> holds.</summary>
    public MsiMessage GetMsixMessage(int entry)
    {
        lock (_core.Lock)
        {
            return _msix.MessageOf(entry);
        }
    }

    /// <summary>Queue <paramref name="index"/>'s line: the one object its device raises, whatever vector it follows.</summary>
    public InterruptLine GetQueueInterrupt(int index) => _queueLines[index];

    public EventFd GetKickEventFd(int index) => _core.Queues[index].Kick;

    public void Read(ulong offset, Span<byte> data)
    {
        data.Clear();
        if (!TryRegion(offset, data.Length, out uint region, out uint at))
        {
            Log($"{data.Length}-byte BAR0 read at 0x{offset:x4} crosses a structure: ignored");
            return;
        }

        switch (region)
        {
            case L.Bar0CommonOffset:
                ReadCommon(at, data);
                break;
            case L.Bar0IsrOffset:
                // 4.1.4.5: reading the ISR clears it (the driver's acknowledgement).
                if (at == 0)
                {
                    data[0] = (byte)Interlocked.Exchange(ref _isr, 0);
                }

                break;
            case L.Bar0DeviceOffset:
                _core.Device.ReadConfig(at, data);
                break;
            case L.Bar0MsixTableOffset:
                lock (_core.Lock)
                {
                    _msix.ReadTable(at, data);
                }

                break;
            case L.Bar0MsixPbaOffset:
                lock (_core.Lock)
                {
                    _msix.ReadPba(at, data);
                }

                break;
        }
    }

    public void Write(ulong offset, ReadOnlySpan<byte> data)
    {
        if (!TryRegion(offset, data.Length, out uint region, out uint at))
        {
            Log($"{data.Length}-byte BAR0 write at 0x{offset:x4} crosses a structure: ignored");
            return;
        }

        switch (region)
        {
            case L.Bar0CommonOffset:
                WriteCommon(at, data);
                break;
            case L.Bar0DeviceOffset:
                _core.Device.WriteConfig(at, data);
                break;
            case L.Bar0NotifyOffset:
                // 4.1.4.4: queue n notifies at notify_off * multiplier; the data is the queue index
                // (or more, with NOTIFICATION_DATA), the address alone names the queue here.
                if (at % L.NotifyOffMultiplier == 0 && data.Length is 2 or 4)
                {
                    _core.Notify(at / L.NotifyOffMultiplier);
                }
                else
                {
                    Log($"{data.Length}-byte notify write at +0x{at:x} ignored");
                }

                break;
            case L.Bar0MsixTableOffset:
                lock (_core.Lock)
                {
                    _msix.WriteTable(at, data);
                }

                break;
            default:
                // The ISR and, PCI 3.0 §6.8.2.10, the PBA: software should never write pending bits.
                Log($"BAR0 write at 0x{offset:x4} ignored: read-only");
                break;
        }
    }

    public void Dispose()
    {
        lock (_core.Lock)
        {
            foreach (ForwardingInterruptLine line in _queueLines)
            {
                line.Retarget(null);
            }

            _msix.Detach();
        }

        _core.Dispose();
    }

    private static bool TryRegion(ulong offset, int length, out uint region, out uint at)
    {
        region = (uint)(offset & ~(ulong)(L.Bar0RegionSize - 1));
        at = (uint)(offset & (L.Bar0RegionSize - 1));
        return length > 0 && offset < L.Bar0Size && at + (uint)length <= L.Bar0RegionSize;
    }

    private void ReadCommon(uint at, Span<byte> data)
    {
        if (!TryCommonField(at, data.Length, out int field, out int half))
        {
            Log($"{data.Length}-byte common config read at 0x{at:x2} is not a field's natural width: reads 0");
            return;
        }

        ulong value;
        lock (_core.Lock)
        {
            TransportQueue? q = SelectedQueue;
            value = field switch
            {
                L.CommonDeviceFeatureSelect => _deviceFeatureSelect,
                L.CommonDeviceFeature => _core.ReadDeviceFeatures(_deviceFeatureSelect),
                L.CommonDriverFeatureSelect => _driverFeatureSelect,
                L.CommonDriverFeature => _core.ReadDriverFeatures(_driverFeatureSelect),
                L.CommonConfigMsixVector => _configMsixVector,
                L.CommonNumQueues => (ulong)_core.Queues.Length,
                L.CommonDeviceStatus => (byte)_core.Status,
                L.CommonConfigGeneration => (byte)_core.ConfigGeneration,
                L.CommonQueueSelect => _queueSelect,
                // 4.1.4.3.2: an unavailable queue reads size 0.
                L.CommonQueueSize => q?.Size ?? 0,
                L.CommonQueueMsixVector => q?.MsixVector ?? L.NoVector,
                L.CommonQueueEnable => q is { Ready: true } ? 1UL : 0UL,
                L.CommonQueueNotifyOff => _queueSelect,
                L.CommonQueueDesc => q?.DescriptorArea ?? 0,
                L.CommonQueueDriver => q?.DriverArea ?? 0,
                L.CommonQueueDevice => q?.DeviceArea ?? 0,
                L.CommonQueueNotifConfigData => 0, // NOTIF_CONFIG_DATA is never offered
                // Reset completes within the write: always reads as done.
                L.CommonQueueReset => 0,
                _ => 0,
            };
        }

        value >>= half * 32;
        switch (data.Length)
        {
            case 1: data[0] = (byte)value; break;
            case 2: BinaryPrimitives.WriteUInt16LittleEndian(data, (ushort)value); break;
            case 4: BinaryPrimitives.WriteUInt32LittleEndian(data, (uint)value); break;
            case 8: BinaryPrimitives.WriteUInt64LittleEndian(data, value); break;
        }
    }

    private void WriteCommon(uint at, ReadOnlySpan<byte> data)
    {
        if (!TryCommonField(at, data.Length, out int field, out int half))
        {
            Log($"{data.Length}-byte common config write at 0x{at:x2} is not a field's natural width: ignored");
            return;
        }

        ulong value = data.Length switch
        {
            1 => data[0],
            2 => BinaryPrimitives.ReadUInt16LittleEndian(data),
            4 => BinaryPrimitives.ReadUInt32LittleEndian(data),
            _ => BinaryPrimitives.ReadUInt64LittleEndian(data),
        };

        lock (_core.Lock)
        {
            TransportQueue? q = SelectedQueue;
            int qi = _queueSelect;
            switch (field)
            {
                case L.CommonDeviceFeatureSelect:
                    _deviceFeatureSelect = (uint)value;
                    break;
                case L.CommonDriverFeatureSelect:
                    _driverFeatureSelect = (uint)value;
                    break;
                case L.CommonDriverFeature:
                    _core.WriteDriverFeatures(_driverFeatureSelect, (uint)value);
                    break;
                case L.CommonConfigMsixVector:
                    _configMsixVector = AcceptVector((ushort)value, "config");
                    break;
                case L.CommonDeviceStatus:
                    _core.WriteStatus((byte)value);
                    if (value == 0)
                    {
                        ResetRegisters();
                    }

                    break;
                case L.CommonQueueSelect:
                    _queueSelect = (ushort)value;
                    break;
                case L.CommonQueueSize:
                    if (q is not null && _core.WriteQueueField(qi, "queue_size"))
                    {
                        q.Size = (ushort)value;
                    }

                    break;
                case L.CommonQueueMsixVector:
                    // Allowed on an enabled queue too (see the class remarks): the queue's line follows.
                    if (q is not null)
                    {
                        q.MsixVector = AcceptVector((ushort)value, $"queue {qi}");
                        RouteQueue(qi);
                    }

                    break;
                case L.CommonQueueEnable:
                    // 4.1.4.3.2: the driver must not write 0 to queue_enable; queue_reset stops a queue.
                    if (q is not null && value == 1)
                    {
                        _core.EnableQueue(qi);
                    }
                    else
                    {
                        Log($"queue_enable write of {value} for queue {_queueSelect} ignored");
                    }

                    break;
                case L.CommonQueueReset:
                    if (q is not null && value == 1)
                    {
                        _core.ResetQueue(qi);
                        RouteQueue(qi);
                    }

                    break;
                case L.CommonQueueDesc:
                case L.CommonQueueDriver:
                case L.CommonQueueDevice:
                    if (q is not null && _core.WriteQueueField(qi, "a queue address"))
                    {
                        WriteQueueAddress(q, field, half, data.Length, value);
                    }

                    break;
                default:
                    Log($"write to read-only common config field 0x{field:x2} ignored");
                    break;
            }
        }
    }

    /// <summary>
    /// Maps an access to a common configuration field. Each field must be accessed at its natural
    /// width; a 64-bit field may also be accessed as two 32-bit halves (4.1.3.1).
    /// </summary>
    private static bool TryCommonField(uint at, int length, out int field, out int half)
    {
        field = (int)at;
        half = 0;
        int width = at switch
        {
            L.CommonDeviceFeatureSelect or L.CommonDeviceFeature or L.CommonDriverFeatureSelect or L.CommonDriverFeature => 4,
            L.CommonConfigMsixVector or L.CommonNumQueues or L.CommonQueueSelect or L.CommonQueueSize
                or L.CommonQueueMsixVector or L.CommonQueueEnable or L.CommonQueueNotifyOff
                or L.CommonQueueNotifConfigData or L.CommonQueueReset => 2,
            L.CommonDeviceStatus or L.CommonConfigGeneration => 1,
            L.CommonQueueDesc or L.CommonQueueDriver or L.CommonQueueDevice => 8,
            _ => 0,
        };
        if (width == length)
        {
            return true;
        }

        if (length == 4 && at is (L.CommonQueueDesc + 4) or (L.CommonQueueDriver + 4) or (L.CommonQueueDevice + 4))
        {
            field = (int)at - 4;
            half = 1;
            return true;
        }

        return width == 8 && length == 4;
    }

    private static void WriteQueueAddress(TransportQueue q, int field, int half, int length, ulong value)
    {
        ulong Merge(ulong current) => length == 8
            ? value
            : half == 0
                ? (current & 0xffff_ffff_0000_0000UL) | (uint)value
                : (current & 0xffff_ffffUL) | (value << 32);
        switch (field)
        {
            case L.CommonQueueDesc: q.DescriptorArea = Merge(q.DescriptorArea); break;
            case L.CommonQueueDriver: q.DriverArea = Merge(q.DriverArea); break;
            case L.CommonQueueDevice: q.DeviceArea = Merge(q.DeviceArea); break;
        }
    }

    /// <summary>4.1.5.1.2: a vector the device cannot use reads back as NO_VECTOR, which tells the driver.</summary>
    private ushort AcceptVector(ushort vector, string what)
    {
        if (vector == L.NoVector || vector < _msix.Size)
        {
            return vector;
        }

        Log($"MSI-X vector {vector} for {what} refused: the table has {_msix.Size}");
        return L.NoVector;
    }

    private TransportQueue? SelectedQueue => _queueSelect < _core.Queues.Length ? _core.Queues[_queueSelect] : null;

    /// <summary>
    /// After a device reset: the registers return to their defaults, every event is unmapped
    /// (virtio 1.2 §4.1.5.1.2.1), so the queues' lines follow nothing, and no pending MSI-X
    /// message survives: its cause went with the reset (PCI 3.0 §6.8.3.4; QEMU clears the PBA on
    /// a virtio reset as well). The table's messages and masks and the MSI-X enable are PCI
    /// state, not the device's, and stay.
    /// </summary>
    private void ResetRegisters()
    {
        _deviceFeatureSelect = 0;
        _driverFeatureSelect = 0;
        _queueSelect = 0;
        _configMsixVector = L.NoVector;
        Volatile.Write(ref _isr, 0);
        for (int i = 0; i < _queueLines.Length; i++)
        {
            RouteQueue(i);
        }

        _msix.ClearPending();
    }

    /// <summary>
    /// The driver changed MSI-X message control (under the lock). The function mask applies to
    /// every entry. Enabling or disabling moves the queues between their vectors and the ISR
    /// path; on disable a pending message's cause is reported the only way left, as the ISR bit
    /// and INTx (virtio 1.2 §4.1.4.5), and its pending bit cleared (PCI 3.0 §6.8.3.4), so no
    /// stale message is sent if MSI-X is enabled again.
    /// </summary>
    private void OnMsixControlChanged(bool enabled, bool functionMasked)
    {
        bool wasEnabled = _msix.Enabled;
        _msix.SetControl(enabled, functionMasked);
        if (enabled == wasEnabled)
        {
            return;
        }

        for (int i = 0; i < _queueLines.Length; i++)
        {
            RouteQueue(i);
        }

        if (!enabled)
        {
            byte reasons = 0;
            foreach (int entry in _msix.ClearPending())
            {
                if (entry == _configMsixVector)
                {
                    reasons |= L.IsrConfig;
                }

                if (_core.Queues.Any(q => q.MsixVector == entry))
                {
                    reasons |= L.IsrQueue;
                }
            }

            if (reasons != 0)
            {
                RaiseIsr(reasons);
            }
        }
    }

    /// <summary>Points queue <paramref name="index"/>'s line at what it follows now (under the lock).</summary>
    private void RouteQueue(int index) => _queueLines[index].Retarget(QueueTarget(index));

    /// <summary>The ISR + INTx path without MSI-X; with it, the queue's vector's entry, or nothing for NO_VECTOR.</summary>
    private InterruptLine? QueueTarget(int index)
    {
        if (!_msix.Enabled)
        {
            return _isrQueueLine;
        }

        ushort v = _core.Queues[index].MsixVector;
        return v == L.NoVector ? null : _msix[v];
    }

    /// <summary>The line a starting queue gets (called under the lock by the core).</summary>
    private InterruptLine QueueLine(int index)
    {
        RouteQueue(index);
        return _queueLines[index];
    }

    private void RaiseConfigInterrupt()
    {
        // 4.1.4.5.1: the config bit is set before any configuration change notification, MSI-X or not.
        Interlocked.Or(ref _isr, L.IsrConfig);
        if (!_msix.Enabled)
        {
            _intx?.Raise();
            return;
        }

        ushort v = _configMsixVector;
        if (v != L.NoVector)
        {
            _msix[v].Raise();
        }
    }

    private void RaiseIsr(byte bit)
    {
        Interlocked.Or(ref _isr, bit);
        _intx?.Raise();
    }

    private void Log(string message) => Diagnostic?.Invoke(message);

    /// <summary>The function's PCI configuration header and capability list.</summary>
    private sealed class PciConfigSpace : IMmioDevice
    {
        private readonly VirtioPciTransport _owner;
        private readonly byte[] _bytes = new byte[HeaderSize];
        private readonly byte[] _writable = new byte[HeaderSize];
        private bool _barSizing0;
        private bool _barSizing1;

        public PciConfigSpace(VirtioPciTransport owner)
        {
            _owner = owner;
            Span<byte> b = _bytes;
            BinaryPrimitives.WriteUInt16LittleEndian(b[L.PciVendorId..], L.VendorId);
            BinaryPrimitives.WriteUInt16LittleEndian(b[L.PciDeviceIdOffset..], L.PciDeviceId(owner.Device.DeviceId));
            BinaryPrimitives.WriteUInt16LittleEndian(b[L.PciStatus..], L.PciStatusCapabilitiesList);
            b[L.PciRevisionId] = L.RevisionId;

            // Class 0xff ("device does not fit any defined class"): virtio leaves the class to the device type.
            b[L.PciClassCode + 2] = 0xff;
            BinaryPrimitives.WriteUInt16LittleEndian(b[L.PciSubsystemVendorId..], L.VendorId);

            // 4.1.2.1: a non-transitional device's subsystem device ID is 0x40 or more.
            BinaryPrimitives.WriteUInt16LittleEndian(b[L.PciSubsystemId..], 0x40);
            // INTA# routed to the owner's INTx line, as firmware would record it in Interrupt Line.
            b[L.PciInterruptPin] = owner._intx is null ? (byte)0 : (byte)1;
            b[L.PciInterruptLine] = owner._intx is null ? (byte)0xff : (byte)owner._intx.Vector;
            b[L.PciCapabilitiesPointer] = CapCommon;

            WriteVirtioCap(b, CapCommon, CapNotify, L.CapSize, VirtioPciCapType.CommonCfg, L.Bar0CommonOffset, L.CommonSize);
            WriteVirtioCap(b, CapNotify, CapIsr, L.NotifyCapSize, VirtioPciCapType.NotifyCfg, L.Bar0NotifyOffset, L.Bar0RegionSize);
            BinaryPrimitives.WriteUInt32LittleEndian(b[(CapNotify + L.NotifyCapMultiplier)..], L.NotifyOffMultiplier);
            WriteVirtioCap(b, CapIsr, CapDevice, L.CapSize, VirtioPciCapType.IsrCfg, L.Bar0IsrOffset, 1);
            WriteVirtioCap(b, CapDevice, CapPciCfg, L.CapSize, VirtioPciCapType.DeviceCfg, L.Bar0DeviceOffset, (uint)Math.Max(owner.Device.ConfigSize, 0));

            // 4.1.4.9: every device offers the PCI configuration access capability.
            WriteVirtioCap(b, CapPciCfg, owner._msix.Size > 0 ? CapMsix : 0, L.PciCfgCapSize, VirtioPciCapType.PciCfg, 0, 0);
            _writable.AsSpan(CapPciCfg + L.CapBar, 1).Fill(0xff);
            _writable.AsSpan(CapPciCfg + L.CapOffset, 8).Fill(0xff);

            if (owner._msix.Size > 0)
            {
                // PCI 3.0 §6.8.2.3: MSI-X Enable and Function Mask are 0 after reset; Table Size is N - 1.
                b[CapMsix] = L.PciCapIdMsix;
                b[CapMsix + 1] = 0;
                BinaryPrimitives.WriteUInt16LittleEndian(b[(CapMsix + L.MsixMessageControl)..], (ushort)(owner._msix.Size - 1));
                BinaryPrimitives.WriteUInt32LittleEndian(b[(CapMsix + L.MsixTable)..], L.Bar0MsixTableOffset);
                BinaryPrimitives.WriteUInt32LittleEndian(b[(CapMsix + L.MsixPba)..], L.Bar0MsixPbaOffset);
                _writable[CapMsix + L.MsixMessageControl + 1] = (byte)((L.MsixControlEnable | L.MsixControlFunctionMask) >> 8);
            }

            // Command register: memory space, bus master, INTx disable.
            _writable[L.PciCommand] = 0x06;
            _writable[L.PciCommand + 1] = 0x04;
        }

        public void Read(ulong offset, Span<byte> data)
        {
            data.Clear();
            if (offset >= HeaderSize || offset + (ulong)data.Length > HeaderSize)
            {
                return;
            }

            int at = (int)offset;
            if (at == CapPciCfg + L.PciCfgCapData)
            {
                ForwardPciCfg(data, null);
                return;
            }

            lock (_bytes)
            {
                _bytes.AsSpan(at, data.Length).CopyTo(data);
                OverlayBar(at, data);
            }
        }

        public void Write(ulong offset, ReadOnlySpan<byte> data)
        {
            if (offset >= HeaderSize || offset + (ulong)data.Length > HeaderSize)
            {
                return;
            }

            int at = (int)offset;
            if (at == CapPciCfg + L.PciCfgCapData)
            {
                ForwardPciCfg(default, data);
                return;
            }

            // The transport's lock first (its order with _bytes everywhere): a change of MSI-X
            // message control is applied to the table before the write completes.
            lock (_owner._core.Lock)
            {
                ushort before;
                ushort after;
                lock (_bytes)
                {
                    before = MsixControl;

                    // BAR sizing (PCI 3.0, 6.2.5.1): all ones written, the size mask is read back. The
                    // address itself is fixed by the VMM, so any other value is dropped.
                    if (at == L.PciBar0 && data.Length == 4)
                    {
                        _barSizing0 = BinaryPrimitives.ReadUInt32LittleEndian(data) == 0xffff_ffff;
                    }
                    else if (at == L.PciBar0 + 4 && data.Length == 4)
                    {
                        _barSizing1 = BinaryPrimitives.ReadUInt32LittleEndian(data) == 0xffff_ffff;
                    }

                    for (int i = 0; i < data.Length; i++)
                    {
                        byte mask = _writable[at + i];
                        _bytes[at + i] = (byte)((_bytes[at + i] & ~mask) | (data[i] & mask));
                    }

                    after = MsixControl;
                }

                if (before != after)
                {
                    _owner.OnMsixControlChanged((after & L.MsixControlEnable) != 0, (after & L.MsixControlFunctionMask) != 0);
                }
            }
        }

        private ushort MsixControl => _owner._msix.Size > 0
            ? BinaryPrimitives.ReadUInt16LittleEndian(_bytes.AsSpan(CapMsix + L.MsixMessageControl))
            : (ushort)0;

        private void OverlayBar(int at, Span<byte> data)
        {
            // BAR0 is a 64-bit memory BAR (bits 2:1 = 10b) at the owner's fixed address.
            Span<byte> bar = stackalloc byte[8];
            ulong low = _barSizing0 ? ~(ulong)(L.Bar0Size - 1) & 0xffff_fff0UL : _owner.Bar0Address & 0xffff_fff0UL;
            ulong high = _barSizing1 ? 0xffff_ffffUL : _owner.Bar0Address >> 32;
            BinaryPrimitives.WriteUInt32LittleEndian(bar, (uint)low | 0x4);
            BinaryPrimitives.WriteUInt32LittleEndian(bar[4..], (uint)high);
            for (int i = 0; i < data.Length; i++)
            {
                int r = at + i - L.PciBar0;
                if (r is >= 0 and < 8)
                {
                    data[i] = bar[r];
                }
            }
        }

        /// <summary>4.1.4.9: pci_cfg_data reaches BAR <c>cap.bar</c> at <c>cap.offset</c> for <c>cap.length</c> bytes.</summary>
        private void ForwardPciCfg(Span<byte> readInto, ReadOnlySpan<byte> writeFrom)
        {
            byte bar;
            uint offset;
            uint length;
            lock (_bytes)
            {
                bar = _bytes[CapPciCfg + L.CapBar];
                offset = BinaryPrimitives.ReadUInt32LittleEndian(_bytes.AsSpan(CapPciCfg + L.CapOffset));
                length = BinaryPrimitives.ReadUInt32LittleEndian(_bytes.AsSpan(CapPciCfg + L.CapLengthField));
            }

            int n = readInto.IsEmpty ? writeFrom.Length : readInto.Length;
            if (bar != 0 || length is not (1 or 2 or 4) || length > n)
            {
                _owner.Log($"PCI cfg access to BAR {bar} +0x{offset:x}, {length} bytes, ignored");
                return;
            }

            if (readInto.IsEmpty)
            {
                _owner.Write(offset, writeFrom[..(int)length]);
            }
            else
            {
                _owner.Read(offset, readInto[..(int)length]);
            }
        }

        private static void WriteVirtioCap(Span<byte> b, int at, int next, int length, VirtioPciCapType type, uint offset, uint size)
        {
            b[at + L.CapVendor] = L.PciCapIdVendor;
            b[at + L.CapNext] = (byte)next;
            b[at + L.CapLength] = (byte)length;
            b[at + L.CapCfgType] = (byte)type;
            b[at + L.CapBar] = 0;
            b[at + L.CapId] = 0;
            BinaryPrimitives.WriteUInt32LittleEndian(b[(at + L.CapOffset)..], offset);
            BinaryPrimitives.WriteUInt32LittleEndian(b[(at + L.CapLengthField)..], size);
        }
    }
}
