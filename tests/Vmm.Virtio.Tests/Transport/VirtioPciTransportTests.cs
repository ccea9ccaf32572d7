using System.Buffers.Binary;
using NUnit.Framework;
using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Core.Memory;
using Vmm.Virtio.Spec;
using Vmm.Virtio.Transport;
using L = Vmm.Virtio.Spec.VirtioPciLayout;

namespace Vmm.Virtio.Tests.Transport;

[TestFixture]
public sealed partial class VirtioPciTransportTests
{
    private const ulong Bar0 = 0xc000_8000;

    private GuestMemory _memory = null!;
    private FakeVirtioDevice _device = null!;
    private EventFd[] _vectorEvents = null!;
    private InterruptLine[] _vmLines = null!;
    private CountingLine _intx = null!;
    private VirtioPciTransport _transport = null!;
    private List<string> _log = null!;

    [SetUp]
    public void SetUp()
    {
        _memory = GuestMemory.Create(1 << 20);
        _device = new FakeVirtioDevice { DeviceId = VirtioDeviceId.Entropy, QueueCount = 2 };
        _vectorEvents = [new EventFd(), new EventFd(), new EventFd()];
        _intx = new CountingLine(11);
        // The VM's lines for vectors 64 to 66; an x86 message for one of them reaches it.
        _vmLines = [.. _vectorEvents.Select((e, i) => (InterruptLine)new EventBackedInterruptLine(64 + i, e))];
        _transport = new VirtioPciTransport(_device, _memory, Bar0, 3, Route, _intx.Line);
        _log = [];
        _transport.Diagnostic += m => _log.Add(m);
    }

    [TearDown]
    public void TearDown()
    {
        _transport.Dispose();
        _device.Dispose();
        foreach (EventFd e in _vectorEvents)
        {
            e.Dispose();
        }

        _memory.Dispose();
    }

    [Test]
    public void Config_header_identifies_a_modern_virtio_device_with_a_capability_list()
    {
        Assert.Multiple(() =>
        {
            Assert.That(Cfg16(L.PciVendorId), Is.EqualTo(0x1AF4));
            Assert.That(Cfg16(L.PciDeviceIdOffset), Is.EqualTo(0x1044));
            Assert.That(Cfg8(L.PciRevisionId), Is.EqualTo(1));
            Assert.That(Cfg16(L.PciStatus) & L.PciStatusCapabilitiesList, Is.Not.Zero);
            Assert.That(Cfg16(L.PciSubsystemId), Is.GreaterThanOrEqualTo(0x40));
            Assert.That(Cfg32(L.PciBar0), Is.EqualTo(0xc000_8004u), "64-bit memory BAR");
            Assert.That(Cfg32(L.PciBar0 + 4), Is.Zero);
        });
    }

    [Test]
    public void Capability_list_names_every_structure_in_BAR0()
    {
        var found = new Dictionary<VirtioPciCapType, (uint Offset, uint Length, int At)>();
        int msix = 0;
        int cap = Cfg8(L.PciCapabilitiesPointer);
        for (int guard = 0; cap != 0 && guard < 16; guard++)
        {
            if (Cfg8(cap) == L.PciCapIdVendor)
            {
                Assert.That(Cfg8(cap + L.CapBar), Is.Zero);
                found[(VirtioPciCapType)Cfg8(cap + L.CapCfgType)] = (Cfg32(cap + L.CapOffset), Cfg32(cap + L.CapLengthField), cap);
            }
            else if (Cfg8(cap) == L.PciCapIdMsix)
            {
                msix = cap;
            }

            cap = Cfg8(cap + L.CapNext);
        }

        Assert.Multiple(() =>
        {
            Assert.That(found[VirtioPciCapType.CommonCfg].Offset, Is.EqualTo(0x0000u));
            Assert.That(found[VirtioPciCapType.CommonCfg].Length, Is.EqualTo((uint)L.CommonSize));
            Assert.That(found[VirtioPciCapType.IsrCfg].Offset, Is.EqualTo(0x1000u));
            Assert.That(found[VirtioPciCapType.DeviceCfg].Offset, Is.EqualTo(0x2000u));
            Assert.That(found[VirtioPciCapType.DeviceCfg].Length, Is.EqualTo(16u));
            Assert.That(found[VirtioPciCapType.NotifyCfg].Offset, Is.EqualTo(0x3000u));
            Assert.That(Cfg32(found[VirtioPciCapType.NotifyCfg].At + L.NotifyCapMultiplier), Is.EqualTo(4u));
            Assert.That(found.ContainsKey(VirtioPciCapType.PciCfg), Is.True);
            Assert.That(msix, Is.Not.Zero);
            Assert.That((Cfg16(msix + L.MsixMessageControl) & 0x7ff) + 1, Is.EqualTo(3));
        });
    }

    [Test]
    public void BAR_sizing_reads_back_the_size_mask()
    {
        CfgWrite32(L.PciBar0, 0xffff_ffff);
        Assert.That(Cfg32(L.PciBar0), Is.EqualTo(~(L.Bar0Size - 1) | 4));
        CfgWrite32(L.PciBar0, 0x1234_0000);
        Assert.That(Cfg32(L.PciBar0), Is.EqualTo(0xc000_8004u), "the address is fixed");
    }

    [Test]
    public void Common_config_negotiates_features_with_the_same_rules_as_mmio()
    {
        Assert.That(Common16(L.CommonNumQueues), Is.EqualTo(2));
        Common32Write(L.CommonDeviceFeatureSelect, 1);
        Assert.That(Common32(L.CommonDeviceFeature), Is.EqualTo(1u), "VERSION_1 added");
        Common32Write(L.CommonDeviceFeatureSelect, 0);
        Assert.That(Common32(L.CommonDeviceFeature), Is.EqualTo((uint)_device.DeviceFeatures));

        Common8Write(L.CommonDeviceStatus, 3);
        Common32Write(L.CommonDriverFeatureSelect, 0);
        Common32Write(L.CommonDriverFeature, 0xffff_ffff);
        Assert.That(_transport.DriverFeatures, Is.EqualTo(_device.DeviceFeatures), "masked to the offer");
        Common8Write(L.CommonDeviceStatus, 11);
        Assert.That(Common8(L.CommonDeviceStatus) & 8, Is.Zero, "no VERSION_1, no FEATURES_OK");

        Common32Write(L.CommonDriverFeatureSelect, 1);
        Common32Write(L.CommonDriverFeature, 1);
        Common8Write(L.CommonDeviceStatus, 11);
        Assert.That(Common8(L.CommonDeviceStatus), Is.EqualTo(11));
        Common32Write(L.CommonDriverFeatureSelect, 0);
        Common32Write(L.CommonDriverFeature, 0);
        Assert.That(_transport.DriverFeatures, Is.EqualTo(_device.DeviceFeatures | VirtioFeatures.VERSION_1), "locked at FEATURES_OK");
    }

    [Test]
    public void Queue_enable_starts_the_queue_with_its_parameters_and_notify_kicks_it()
    {
        FeaturesOk();
        Common16Write(L.CommonQueueSelect, 1);
        Assert.That(Common16(L.CommonQueueSize), Is.EqualTo(128));
        Common16Write(L.CommonQueueSize, 32);
        Common64Write(L.CommonQueueDesc, 0x4000);
        Common32Write(L.CommonQueueDriver, 0x5000);
        Common32Write(L.CommonQueueDriver + 4, 0);
        Common64Write(L.CommonQueueDevice, 0x6000);
        ushort notifyOff = Common16(L.CommonQueueNotifyOff);
        Common16Write(L.CommonQueueEnable, 1);

        var (resources, features) = _device.Started[1];
        Assert.Multiple(() =>
        {
            Assert.That(resources.Params, Is.EqualTo(new Vmm.Virtio.Queues.VirtqueueParams(32, 0x4000, 0x5000, 0x6000)));
            Assert.That(features, Is.EqualTo(VirtioFeatures.VERSION_1));
            Assert.That(Common16(L.CommonQueueEnable), Is.EqualTo(1));
            Assert.That(Common64(L.CommonQueueDesc), Is.EqualTo(0x4000UL));
        });

        Span<byte> idx = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(idx, 1);
        _transport.Write(L.Bar0NotifyOffset + (notifyOff * L.NotifyOffMultiplier), idx);
        Assert.That(resources.Kick.Wait(5000), Is.True);
    }

    [Test]
    public void Without_MSIX_queues_use_the_ISR_and_INTx_and_reading_the_ISR_clears_it()
    {
        StartQueue(0, vector: null);
        InterruptLine line = _device.Started[0].Resources.Interrupt;
        Assert.That(line.EventFd, Is.Null);
        line.Raise();

        Assert.Multiple(() =>
        {
            Assert.That(_intx.Count, Is.EqualTo(1));
            Assert.That(Isr(), Is.EqualTo(L.IsrQueue));
            Assert.That(Isr(), Is.Zero);
        });
    }

    [Test]
    public void With_MSIX_a_queue_raises_its_vectors_eventfd_straight_through()
    {
        EnableMsix();
        ProgramEntry(2, vector: 66, masked: false);
        StartQueue(1, vector: 2);
        InterruptLine line = _device.Started[1].Resources.Interrupt;

        Assert.That(line, Is.SameAs(_transport.GetQueueInterrupt(1)));
        Assert.That(line.Vector, Is.EqualTo(66));
        Assert.That(line.EventFd, Is.SameAs(_vectorEvents[2]));
        line.Raise();
        Assert.Multiple(() =>
        {
            Assert.That(_vectorEvents[2].Wait(5000), Is.True);
            Assert.That(Isr(), Is.Zero, "MSI-X does not use the ISR queue bit");
            Assert.That(_intx.Count, Is.Zero);
        });
    }

    [Test]
    public void A_vector_beyond_the_table_reads_back_as_NO_VECTOR()
    {
        Common16Write(L.CommonConfigMsixVector, 3);
        Assert.That(Common16(L.CommonConfigMsixVector), Is.EqualTo(L.NoVector));
        Common16Write(L.CommonQueueMsixVector, 1);
        Assert.That(Common16(L.CommonQueueMsixVector), Is.EqualTo(1));
    }

    [Test]
    public void Config_change_bumps_the_generation_and_raises_the_config_vector()
    {
        EnableMsix();
        ProgramEntry(0, vector: 64, masked: false);
        Common16Write(L.CommonConfigMsixVector, 0);
        byte before = Common8(L.CommonConfigGeneration);
        _device.RaiseConfigChanged();

        Assert.Multiple(() =>
        {
            Assert.That(Common8(L.CommonConfigGeneration), Is.Not.EqualTo(before));
            Assert.That(_vectorEvents[0].Wait(5000), Is.True);
            Assert.That(Isr(), Is.EqualTo(L.IsrConfig));
        });
    }

    [Test]
    public void Device_fault_sets_NEEDS_RESET_and_status_zero_resets()
    {
        StartQueue(0, vector: null);
        _device.RaiseFault(0);
        Assert.Multiple(() =>
        {
            Assert.That(Common8(L.CommonDeviceStatus) & 64, Is.EqualTo(64));
            Assert.That(_intx.Count, Is.EqualTo(1));
            Assert.That(Isr() & L.IsrConfig, Is.EqualTo(L.IsrConfig));
        });

        Common8Write(L.CommonDeviceStatus, 0);
        Assert.Multiple(() =>
        {
            Assert.That(Common8(L.CommonDeviceStatus), Is.Zero);
            Assert.That(_device.Calls, Does.Contain("Reset"));
            Assert.That(Common16(L.CommonQueueEnable), Is.Zero);
            Assert.That(_transport.DriverFeatures, Is.Zero);
        });
    }

    [Test]
    public void Common_fields_must_be_accessed_at_their_natural_width()
    {
        Span<byte> b = stackalloc byte[4];
        _transport.Write(L.CommonDeviceStatus, [1, 0, 0, 0]);
        Assert.That(Common8(L.CommonDeviceStatus), Is.Zero);
        _transport.Read(L.CommonNumQueues, b);
        Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(b), Is.Zero);
        Assert.That(_log, Has.Count.EqualTo(2));
    }

    [Test]
    public void Device_config_is_forwarded_and_the_PCI_cfg_capability_reaches_BAR0()
    {
        Span<byte> b = stackalloc byte[4];
        _transport.Read(L.Bar0DeviceOffset + 4, b);
        Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(b), Is.EqualTo(0x17161514u));
        _transport.Write(L.Bar0DeviceOffset + 1, [0x99]);
        Assert.That(_device.Config[1], Is.EqualTo(0x99));

        int cap = FindCap(VirtioPciCapType.PciCfg);
        CfgWrite32(cap + L.CapOffset, L.Bar0CommonOffset + L.CommonNumQueues);
        CfgWrite32(cap + L.CapLengthField, 2);
        Assert.That(Cfg32(cap + L.PciCfgCapData) & 0xffff, Is.EqualTo(2u));
    }

    private int FindCap(VirtioPciCapType type)
    {
        int cap = Cfg8(L.PciCapabilitiesPointer);
        while (cap != 0)
        {
            if (Cfg8(cap) == L.PciCapIdVendor && Cfg8(cap + L.CapCfgType) == (byte)type)
            {
                return cap;
            }

            cap = Cfg8(cap + L.CapNext);
        }

        throw new AssertionException($"no {type} capability");
    }

    private InterruptLine? Route(MsiMessage message) =>
        message.TryGetX86Vector(out int v) && v is >= 64 and < 67 ? _vmLines[v - 64] : null;

    private void EnableMsix()
    {
        MsixControlWrite((ushort)(MsixControl() | L.MsixControlEnable));
        Assert.That(_transport.MsixEnabled, Is.True);
    }

    private int MsixCap()
    {
        int cap = Cfg8(L.PciCapabilitiesPointer);
        while (Cfg8(cap) != L.PciCapIdMsix)
        {
            cap = Cfg8(cap + L.CapNext);
        }

        return cap;
    }

    private ushort MsixControl() => Cfg16(MsixCap() + L.MsixMessageControl);

    private void MsixControlWrite(ushort value)
    {
        Span<byte> b = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(b, value);
        _transport.ConfigSpace.Write((ulong)(MsixCap() + L.MsixMessageControl), b);
    }

    /// <summary>Entry <paramref name="entry"/>: x86 message for <paramref name="vector"/>, then the mask bit.</summary>
    private void ProgramEntry(int entry, int vector, bool masked)
    {
        MsiMessage m = MsiMessage.X86(vector);
        TableWrite32(entry, L.MsixEntryAddressLow, (uint)m.Address);
        TableWrite32(entry, L.MsixEntryAddressHigh, (uint)(m.Address >> 32));
        TableWrite32(entry, L.MsixEntryData, m.Data);
        TableWrite32(entry, L.MsixEntryVectorControl, masked ? L.MsixVectorControlMask : 0);
    }

    private uint Table32(int entry, int field)
    {
        Span<byte> b = stackalloc byte[4];
        _transport.Read(L.Bar0MsixTableOffset + (ulong)(entry * L.MsixEntrySize) + (ulong)field, b);
        return BinaryPrimitives.ReadUInt32LittleEndian(b);
    }

    private void TableWrite32(int entry, int field, uint value)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, value);
        _transport.Write(L.Bar0MsixTableOffset + (ulong)(entry * L.MsixEntrySize) + (ulong)field, b);
    }

    private ulong Pba()
    {
        Span<byte> b = stackalloc byte[8];
        _transport.Read(L.Bar0MsixPbaOffset, b);
        return BinaryPrimitives.ReadUInt64LittleEndian(b);
    }

    private void FeaturesOk()
    {
        Common8Write(L.CommonDeviceStatus, 3);
        Common32Write(L.CommonDriverFeatureSelect, 1);
        Common32Write(L.CommonDriverFeature, 1);
        Common8Write(L.CommonDeviceStatus, 11);
    }

    private void StartQueue(ushort index, ushort? vector)
    {
        FeaturesOk();
        Common16Write(L.CommonQueueSelect, index);
        if (vector is { } v)
        {
            Common16Write(L.CommonQueueMsixVector, v);
        }

        Common64Write(L.CommonQueueDesc, 0x1000);
        Common64Write(L.CommonQueueDriver, 0x2000);
        Common64Write(L.CommonQueueDevice, 0x3000);
        Common16Write(L.CommonQueueEnable, 1);
        Assert.That(_device.Started.ContainsKey(index), Is.True);
    }

    private byte Isr()
    {
        Span<byte> b = stackalloc byte[1];
        _transport.Read(L.Bar0IsrOffset, b);
        return b[0];
    }

    private byte Cfg8(int offset)
    {
        Span<byte> b = stackalloc byte[1];
        _transport.ConfigSpace.Read((ulong)offset, b);
        return b[0];
    }

    private ushort Cfg16(int offset)
    {
        Span<byte> b = stackalloc byte[2];
        _transport.ConfigSpace.Read((ulong)offset, b);
        return BinaryPrimitives.ReadUInt16LittleEndian(b);
    }

    private uint Cfg32(int offset)
    {
        Span<byte> b = stackalloc byte[4];
        _transport.ConfigSpace.Read((ulong)offset, b);
        return BinaryPrimitives.ReadUInt32LittleEndian(b);
    }

    private void CfgWrite32(int offset, uint value)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, value);
        _transport.ConfigSpace.Write((ulong)offset, b);
    }

    private byte Common8(int field)
    {
        Span<byte> b = stackalloc byte[1];
        _transport.Read((ulong)field, b);
        return b[0];
    }

    private void Common8Write(int field, byte value) => _transport.Write((ulong)field, [value]);

    private ushort Common16(int field)
    {
        Span<byte> b = stackalloc byte[2];
        _transport.Read((ulong)field, b);
        return BinaryPrimitives.ReadUInt16LittleEndian(b);
    }

    private void Common16Write(int field, ushort value)
    {
        Span<byte> b = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(b, value);
        _transport.Write((ulong)field, b);
    }

    private uint Common32(int field)
    {
        Span<byte> b = stackalloc byte[4];
        _transport.Read((ulong)field, b);
        return BinaryPrimitives.ReadUInt32LittleEndian(b);
    }

    private void Common32Write(int field, uint value)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, value);
        _transport.Write((ulong)field, b);
    }

    private ulong Common64(int field)
    {
        Span<byte> b = stackalloc byte[8];
        _transport.Read((ulong)field, b);
        return BinaryPrimitives.ReadUInt64LittleEndian(b);
    }

    private void Common64Write(int field, ulong value)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, value);
        _transport.Write((ulong)field, b);
    }
}
