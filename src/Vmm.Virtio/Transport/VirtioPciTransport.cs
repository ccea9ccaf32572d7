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
/// Interrupts: the owner supplies one <see cref="InterruptLine"/> per MSI-X vector. With MSI-X
/// enabled, a queue's line is its vector's line handed straight to the device, so an
/// event-backed vector can be signalled by the device (or a vhost-user back-end) with no proxy and
/// the ISR is not involved (4.1.4.5). Without MSI-X the transport falls back to the ISR plus the
/// optional INTx line.
/// The MSI-X table is pre-programmed by the VMM: entry n's message data is vector n's number,
/// and driver writes to it are ignored, because delivery goes through the owner's lines.
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
    private readonly InterruptLine[] _vectors;
    private readonly InterruptLine? _intx;
    private readonly InterruptLine _isrQueueLine;
    private readonly InterruptLine _noInterrupt;
    private readonly PciConfigSpace _configSpace;
    private int _isr;
    private uint _deviceFeatureSelect;
    private uint _driverFeatureSelect;
    private ushort _queueSelect;
    private ushort _configMsixVector = L.NoVector;

    /// <param name="device">The device behind the transport.</param>
    /// <param name="memory">The guest RAM its rings live in.</param>
    /// <param name="bar0Address">Where the owner mapped BAR0; the BAR register reports it.</param>
    /// <param name="msixVectors">One line per MSI-X vector (the table size); may be empty.</param>
    /// <param name="intx">The legacy interrupt used while MSI-X is disabled; null for none.</param>
    public VirtioPciTransport(
        IVirtioDevice device,
        GuestMemory memory,
        ulong bar0Address,
        IReadOnlyList<InterruptLine> msixVectors,
        InterruptLine? intx = null)
    {
        ArgumentNullException.ThrowIfNull(msixVectors);
        if (msixVectors.Count > 2048)
        {
            throw new ArgumentOutOfRangeException(nameof(msixVectors), "MSI-X allows at most 2048 vectors.");
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
        _vectors = [.. msixVectors];
        _intx = intx;
        _isrQueueLine = new FunctionBackedInterruptLine(intx?.Vector ?? -1, _ => RaiseIsr(L.IsrQueue));
        _noInterrupt = new FunctionBackedInterruptLine(-1, _ => { });
        _core = new VirtioTransportCore(device, memory, QueueLine, RaiseConfigInterrupt, Log);
        _configSpace = new PciConfigSpace(this);
    }

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
    public bool MsixEnabled => _configSpace.MsixEnabled;

    public IReadOnlyList<InterruptLine> MsixVectors => _vectors;

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
                ReadMsixTable(at, data);
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
            default:
                Log($"BAR0 write at 0x{offset:x4} ignored: read-only");
                break;
        }
    }

    public void Dispose() => _core.Dispose();

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
                    if (q is not null && _core.WriteQueueField(qi, "queue_msix_vector"))
                    {
                        q.MsixVector = AcceptVector((ushort)value, $"queue {qi}");
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
        if (vector == L.NoVector || vector < _vectors.Length)
        {
            return vector;
        }

        Log($"MSI-X vector {vector} for {what} refused: the table has {_vectors.Length}");
        return L.NoVector;
    }

    private TransportQueue? SelectedQueue => _queueSelect < _core.Queues.Length ? _core.Queues[_queueSelect] : null;

    private void ResetRegisters()
    {
        _deviceFeatureSelect = 0;
        _driverFeatureSelect = 0;
        _queueSelect = 0;
        _configMsixVector = L.NoVector;
        Volatile.Write(ref _isr, 0);
    }

    /// <summary>The line a starting queue gets: its MSI-X vector's own line, or the ISR + INTx path.</summary>
    private InterruptLine QueueLine(int index)
    {
        if (!MsixEnabled)
        {
            return _isrQueueLine;
        }

        ushort v = _core.Queues[index].MsixVector;
        return v == L.NoVector ? _noInterrupt : _vectors[v];
    }

    private void RaiseConfigInterrupt()
    {
        // 4.1.4.5.1: the config bit is set before any configuration change notification, MSI-X or not.
        Interlocked.Or(ref _isr, L.IsrConfig);
        if (!MsixEnabled)
        {
            _intx?.Raise();
            return;
        }

        ushort v = _configMsixVector;
        if (v != L.NoVector)
        {
            _vectors[v].Raise();
        }
    }

    private void RaiseIsr(byte bit)
    {
        Interlocked.Or(ref _isr, bit);
        _intx?.Raise();
    }

    private void ReadMsixTable(uint at, Span<byte> data)
    {
        if (data.Length != 4 || (at & 3) != 0)
        {
            return;
        }

        uint entry = at / L.MsixEntrySize;
        if (entry >= _vectors.Length)
        {
            return;
        }

        uint value = (at % L.MsixEntrySize) switch
        {
            0 => 0xfee0_0000, // message address: the x86 MSI window, as firmware would program it
            8 => (uint)_vectors[entry].Vector,
            _ => 0,
        };
        BinaryPrimitives.WriteUInt32LittleEndian(data, value);
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
            WriteVirtioCap(b, CapPciCfg, owner._vectors.Length > 0 ? CapMsix : 0, L.PciCfgCapSize, VirtioPciCapType.PciCfg, 0, 0);
            _writable.AsSpan(CapPciCfg + L.CapBar, 1).Fill(0xff);
            _writable.AsSpan(CapPciCfg + L.CapOffset, 8).Fill(0xff);

            if (owner._vectors.Length > 0)
            {
                b[CapMsix] = L.PciCapIdMsix;
                b[CapMsix + 1] = 0;
                BinaryPrimitives.WriteUInt16LittleEndian(b[(CapMsix + L.MsixMessageControl)..], (ushort)(owner._vectors.Length - 1));
                BinaryPrimitives.WriteUInt32LittleEndian(b[(CapMsix + L.MsixTable)..], L.Bar0MsixTableOffset);
                BinaryPrimitives.WriteUInt32LittleEndian(b[(CapMsix + L.MsixPba)..], L.Bar0MsixPbaOffset);
                _writable[CapMsix + L.MsixMessageControl + 1] = (byte)((L.MsixControlEnable | L.MsixControlFunctionMask) >> 8);
            }

            // Command register: memory space, bus master, INTx disable.
            _writable[L.PciCommand] = 0x06;
            _writable[L.PciCommand + 1] = 0x04;
        }

        public bool MsixEnabled
        {
            get
            {
                ushort control = BinaryPrimitives.ReadUInt16LittleEndian(_bytes.AsSpan(CapMsix + L.MsixMessageControl));
                return _owner._vectors.Length > 0 && (control & L.MsixControlEnable) != 0;
            }
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

            lock (_bytes)
            {
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
            }
        }

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
