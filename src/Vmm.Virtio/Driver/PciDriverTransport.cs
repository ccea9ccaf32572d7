using System.Buffers.Binary;
using Vmm.Core.Interrupts;
using Vmm.Core.Machine;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using L = Vmm.Virtio.Spec.VirtioPciLayout;

namespace Vmm.Virtio.Driver;

/// <summary>
/// The guest side of virtio-pci modern (virtio 1.2, 4.1), as Linux's virtio_pci_modern.c:
/// the structures are found by walking the capability list (4.1.4), and every field is
/// accessed at its natural width (4.1.3.1).
/// </summary>
internal sealed class PciDriverTransport : IDriverTransport
{
    private readonly MmioBus _bus;
    private readonly ulong _config;
    private readonly ulong _common;
    private readonly ulong _isr;
    private readonly ulong _device;
    private readonly ulong _notifyBase;
    private readonly uint _notifyMultiplier;
    private readonly int _msixCap;
    private readonly ulong _msixTable;
    private readonly int _msixTableSize;
    private readonly ulong[] _notifyAddress;

    public PciDriverTransport(MmioBus bus, ulong configAddress)
    {
        _bus = bus;
        _config = configAddress;
        ulong bar0 = ReadBar0();
        if ((ReadConfig16(L.PciStatus) & L.PciStatusCapabilitiesList) == 0)
        {
            throw new VirtioDriverException($"{Name}: no capability list.");
        }

        ulong? common = null, isr = null, device = null, notify = null;
        int cap = ReadConfig8(L.PciCapabilitiesPointer) & 0xfc;
        for (int guard = 0; cap != 0 && guard < 48; guard++)
        {
            byte id = ReadConfig8(cap);
            if (id == L.PciCapIdVendor)
            {
                var type = (VirtioPciCapType)ReadConfig8(cap + L.CapCfgType);
                byte bar = ReadConfig8(cap + L.CapBar);
                ulong at = bar0 + ReadConfig32(cap + L.CapOffset);

                // 4.1.4.1: the first capability of each type that the driver can use is the one to use.
                if (bar == 0)
                {
                    switch (type)
                    {
                        case VirtioPciCapType.CommonCfg: common ??= at; break;
                        case VirtioPciCapType.IsrCfg: isr ??= at; break;
                        case VirtioPciCapType.DeviceCfg: device ??= at; break;
                        case VirtioPciCapType.NotifyCfg when notify is null:
                            notify = at;
                            _notifyMultiplier = ReadConfig32(cap + L.NotifyCapMultiplier);
                            break;
                    }
                }
            }
            else if (id == L.PciCapIdMsix)
            {
                _msixCap = cap;
                _msixTableSize = (ReadConfig16(cap + L.MsixMessageControl) & L.MsixControlTableSize) + 1;
                uint table = ReadConfig32(cap + L.MsixTable);
                _msixTable = (table & 7) == 0 ? bar0 + (table & ~7u) : 0;
            }

            cap = ReadConfig8(cap + L.CapNext) & 0xfc;
        }

        if (common is null || isr is null || notify is null)
        {
            throw new VirtioDriverException($"{Name}: the common, ISR or notify capability is missing.");
        }

        _common = common.Value;
        _isr = isr.Value;
        _device = device ?? 0;
        _notifyBase = notify.Value;

        // Enable memory decoding and bus mastering, as a PCI driver does before using the BAR.
        WriteConfig16(L.PciCommand, (ushort)(ReadConfig16(L.PciCommand) | 0x6));
        _notifyAddress = new ulong[Math.Max(0, (int)ReadCommon16(L.CommonNumQueues))];
    }

    public string Name => $"virtio-pci@0x{_config:x}";

    /// <summary>INTx from the Interrupt Line register when the function has an interrupt pin; -1 otherwise.</summary>
    public int SharedIrq => ReadConfig8(L.PciInterruptPin) != 0 ? ReadConfig8(L.PciInterruptLine) : -1;

    public int QueueCount => ReadCommon16(L.CommonNumQueues);

    public byte ReadStatus() => ReadCommon8(L.CommonDeviceStatus);

    public void WriteStatus(byte status) => WriteCommon8(L.CommonDeviceStatus, status);

    public ulong ReadDeviceFeatures()
    {
        WriteCommon32(L.CommonDeviceFeatureSelect, 1);
        ulong high = ReadCommon32(L.CommonDeviceFeature);
        WriteCommon32(L.CommonDeviceFeatureSelect, 0);
        return (high << 32) | ReadCommon32(L.CommonDeviceFeature);
    }

    public void WriteDriverFeatures(ulong features)
    {
        WriteCommon32(L.CommonDriverFeatureSelect, 1);
        WriteCommon32(L.CommonDriverFeature, (uint)(features >> 32));
        WriteCommon32(L.CommonDriverFeatureSelect, 0);
        WriteCommon32(L.CommonDriverFeature, (uint)features);
    }

    public ushort ReadQueueMaxSize(int index)
    {
        if (index >= QueueCount)
        {
            return 0;
        }

        // 4.1.4.3: queue_size reads the maximum after reset; the driver may write a smaller one.
        WriteCommon16(L.CommonQueueSelect, (ushort)index);
        return ReadCommon16(L.CommonQueueSize);
    }

    public ushort? SetupQueue(int index, VirtqueueParams queue, ushort? vector)
    {
        // 4.1.5.1.3: select, size, vector (read back: NO_VECTOR means refused), areas, enable.
        WriteCommon16(L.CommonQueueSelect, (ushort)index);
        if (ReadCommon16(L.CommonQueueEnable) != 0)
        {
            throw new VirtioDriverException($"{Name}: queue {index} is already in use.");
        }

        WriteCommon16(L.CommonQueueSize, queue.Size);
        ushort? taken = null;
        if (vector is { } v)
        {
            WriteCommon16(L.CommonQueueMsixVector, v);
            taken = ReadCommon16(L.CommonQueueMsixVector);
            if (taken != v)
            {
                throw new VirtioDriverException($"{Name}: queue {index} refused MSI-X vector {v}.");
            }
        }

        WriteCommon64(L.CommonQueueDesc, queue.DescriptorArea);
        WriteCommon64(L.CommonQueueDriver, queue.DriverArea);
        WriteCommon64(L.CommonQueueDevice, queue.DeviceArea);
        ushort notifyOff = ReadCommon16(L.CommonQueueNotifyOff);
        if (index < _notifyAddress.Length)
        {
            _notifyAddress[index] = _notifyBase + ((ulong)notifyOff * _notifyMultiplier);
        }

        WriteCommon16(L.CommonQueueEnable, 1);
        return taken;
    }

    public bool IsQueueReady(int index)
    {
        WriteCommon16(L.CommonQueueSelect, (ushort)index);
        return ReadCommon16(L.CommonQueueEnable) == 1;
    }

    public void Notify(int index)
    {
        Span<byte> b = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(b, (ushort)index);
        _bus.Write(_notifyAddress[index], b);
    }

    public uint ReadConfigGeneration() => ReadCommon8(L.CommonConfigGeneration);

    public void ReadConfig(uint offset, Span<byte> data)
    {
        if (_device == 0)
        {
            data.Clear();
            return;
        }

        _bus.Read(_device + offset, data);
    }

    public void WriteConfig(uint offset, ReadOnlySpan<byte> data)
    {
        if (_device != 0)
        {
            _bus.Write(_device + offset, data);
        }
    }

    public int MsixTableSize => _msixCap != 0 && _msixTable != 0 ? _msixTableSize : 0;

    public void EnableMsix(IReadOnlyList<MsiMessage> messages)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (messages.Count > MsixTableSize)
        {
            throw new VirtioDriverException($"{Name}: {messages.Count} MSI-X messages for a table of {MsixTableSize}.");
        }

        // 1. Enabled with the function masked: no entry fires while the table is written.
        ushort control = ReadConfig16(_msixCap + L.MsixMessageControl);
        WriteConfig16(_msixCap + L.MsixMessageControl, (ushort)(control | L.MsixControlEnable | L.MsixControlFunctionMask));

        // 2. Every entry masked (msix_mask_all), whatever was left in the table.
        for (int i = 0; i < _msixTableSize; i++)
        {
            WriteEntry(i, L.MsixEntryVectorControl, L.MsixVectorControlMask);
        }

        // 3. The messages, each into a masked entry (__pci_write_msi_msg), so no half-written one is sent.
        for (int i = 0; i < messages.Count; i++)
        {
            WriteEntry(i, L.MsixEntryAddressLow, (uint)messages[i].Address);
            WriteEntry(i, L.MsixEntryAddressHigh, (uint)(messages[i].Address >> 32));
            WriteEntry(i, L.MsixEntryData, messages[i].Data);
        }

        // 4. The function mask off; each entry is unmasked when its interrupt is wanted (request_irq).
        MaskMsixFunction(false);
    }

    public void DisableMsix()
    {
        if (MsixTableSize == 0)
        {
            return;
        }

        // pci_msix_shutdown: every entry masked, then MSI-X Enable cleared.
        for (int i = 0; i < _msixTableSize; i++)
        {
            WriteEntry(i, L.MsixEntryVectorControl, L.MsixVectorControlMask);
        }

        ushort control = ReadConfig16(_msixCap + L.MsixMessageControl);
        WriteConfig16(_msixCap + L.MsixMessageControl, (ushort)(control & ~(L.MsixControlEnable | L.MsixControlFunctionMask)));
    }

    public void MaskMsixEntry(int entry, bool masked)
    {
        if ((uint)entry >= (uint)MsixTableSize)
        {
            throw new ArgumentOutOfRangeException(nameof(entry), $"{Name}: the MSI-X table has {MsixTableSize} entries.");
        }

        WriteEntry(entry, L.MsixEntryVectorControl, masked ? L.MsixVectorControlMask : 0);

        // Read back, as Linux does after a mask write: on real hardware it flushes the posted write.
        _ = _bus.ReadUInt32(EntryAddress(entry, L.MsixEntryVectorControl));
    }

    public void MaskMsixFunction(bool masked)
    {
        ushort control = ReadConfig16(_msixCap + L.MsixMessageControl);
        control = masked ? (ushort)(control | L.MsixControlFunctionMask) : (ushort)(control & ~L.MsixControlFunctionMask);
        WriteConfig16(_msixCap + L.MsixMessageControl, control);
    }

    public void SetConfigMsixVector(ushort entry)
    {
        WriteCommon16(L.CommonConfigMsixVector, entry);
        if (ReadCommon16(L.CommonConfigMsixVector) != entry)
        {
            throw new VirtioDriverException($"{Name}: the device refused MSI-X vector {entry} for configuration changes.");
        }
    }

    public uint ReadAndAckInterruptStatus()
    {
        // 4.1.4.5: reading the ISR acknowledges it.
        Span<byte> b = stackalloc byte[1];
        _bus.Read(_isr, b);
        return b[0];
    }

    private ulong EntryAddress(int entry, int field) => _msixTable + ((ulong)entry * L.MsixEntrySize) + (ulong)field;

    private void WriteEntry(int entry, int field, uint value) => _bus.WriteUInt32(EntryAddress(entry, field), value);

    private ulong ReadBar0()
    {
        uint low = ReadConfig32(L.PciBar0);
        if ((low & 1) != 0)
        {
            throw new VirtioDriverException($"{Name}: BAR0 is an I/O BAR.");
        }

        ulong address = low & 0xffff_fff0UL;
        if ((low & 0x6) == 0x4)
        {
            address |= (ulong)ReadConfig32(L.PciBar0 + 4) << 32;
        }

        return address;
    }

    private byte ReadConfig8(int offset)
    {
        Span<byte> b = stackalloc byte[1];
        _bus.Read(_config + (ulong)offset, b);
        return b[0];
    }

    private ushort ReadConfig16(int offset)
    {
        Span<byte> b = stackalloc byte[2];
        _bus.Read(_config + (ulong)offset, b);
        return BinaryPrimitives.ReadUInt16LittleEndian(b);
    }

    private uint ReadConfig32(int offset) => _bus.ReadUInt32(_config + (ulong)offset);

    private void WriteConfig16(int offset, ushort value)
    {
        Span<byte> b = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(b, value);
        _bus.Write(_config + (ulong)offset, b);
    }

    private byte ReadCommon8(int field)
    {
        Span<byte> b = stackalloc byte[1];
        _bus.Read(_common + (ulong)field, b);
        return b[0];
    }

    private void WriteCommon8(int field, byte value) => _bus.Write(_common + (ulong)field, [value]);

    private ushort ReadCommon16(int field)
    {
        Span<byte> b = stackalloc byte[2];
        _bus.Read(_common + (ulong)field, b);
        return BinaryPrimitives.ReadUInt16LittleEndian(b);
    }

    private void WriteCommon16(int field, ushort value)
    {
        Span<byte> b = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(b, value);
        _bus.Write(_common + (ulong)field, b);
    }

    private uint ReadCommon32(int field) => _bus.ReadUInt32(_common + (ulong)field);

    private void WriteCommon32(int field, uint value) => _bus.WriteUInt32(_common + (ulong)field, value);

    private void WriteCommon64(int field, ulong value)
    {
        // 4.1.3.1: 64-bit fields as two 32-bit writes, low half first, as Linux's vp_iowrite64_twopart.
        WriteCommon32(field, (uint)value);
        WriteCommon32(field + 4, (uint)(value >> 32));
    }
}
