using NUnit.Framework;
using System.Buffers.Binary;
using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Core.Memory;
using Vmm.Virtio.Spec;
using Vmm.Virtio.Transport;
using R = Vmm.Virtio.Spec.VirtioMmioRegisters;

namespace Vmm.Virtio.Tests.Transport;

[TestFixture]
public sealed class VirtioMmioTransportTests
{
    private GuestMemory _memory = null!;
    private FakeVirtioDevice _device = null!;
    private CountingLine _line = null!;
    private VirtioMmioTransport _transport = null!;
    private List<string> _log = null!;

    [SetUp]
    public void SetUp()
    {
        _memory = GuestMemory.Create(1 << 20);
        _device = new FakeVirtioDevice();
        _line = new CountingLine(7);
        _transport = new VirtioMmioTransport(_device, _memory, _line.Line);
        _log = [];
        _transport.Diagnostic += m => _log.Add(m);
    }

    [TearDown]
    public void TearDown()
    {
        _transport.Dispose();
        _device.Dispose();
        _memory.Dispose();
    }

    [Test]
    public void Identifies_as_virtio_mmio_version_2()
    {
        Assert.Multiple(() =>
        {
            Assert.That(Read(R.MagicValue), Is.EqualTo(0x74726976u));
            Assert.That(Read(R.Version), Is.EqualTo(2u));
            Assert.That(Read(R.DeviceId), Is.EqualTo((uint)VirtioDeviceId.Block));
            Assert.That(Read(R.VendorId), Is.EqualTo(VirtioMmioTransport.VendorIdValue));
        });
    }

    [Test]
    public void Device_features_are_read_through_the_select_window_with_VERSION_1_added()
    {
        Write(R.DeviceFeaturesSel, 0);
        uint low = Read(R.DeviceFeatures);
        Write(R.DeviceFeaturesSel, 1);
        uint high = Read(R.DeviceFeatures);
        Write(R.DeviceFeaturesSel, 2);
        uint beyond = Read(R.DeviceFeatures);

        Assert.Multiple(() =>
        {
            Assert.That(low, Is.EqualTo((uint)_device.DeviceFeatures));
            Assert.That(high, Is.EqualTo(1u), "VERSION_1 is bit 32");
            Assert.That(beyond, Is.Zero);
        });
    }

    [Test]
    public void Driver_features_are_masked_to_what_was_offered()
    {
        AcceptFeatures(ulong.MaxValue);
        Assert.That(_transport.DriverFeatures, Is.EqualTo(_device.DeviceFeatures | VirtioFeatures.VERSION_1));
        Write(R.DriverFeaturesSel, 1);
        Assert.That(Read(R.DriverFeatures), Is.EqualTo(1u));
    }

    [Test]
    public void FEATURES_OK_is_refused_without_VERSION_1()
    {
        Write(R.Status, 3);
        AcceptFeatures(FakeVirtioDevice.DeviceSpecificFeature);
        Write(R.Status, 3 | 8);

        Assert.That(Read(R.Status) & 8, Is.Zero);
        Assert.That(_log, Has.Some.Contains("VERSION_1"));
    }

    [Test]
    public void Feature_writes_after_FEATURES_OK_are_ignored()
    {
        NegotiateFeaturesOk(VirtioFeatures.VERSION_1);
        AcceptFeatures(ulong.MaxValue);

        Assert.Multiple(() =>
        {
            Assert.That(_transport.DriverFeatures, Is.EqualTo(VirtioFeatures.VERSION_1));
            Assert.That(Read(R.Status) & 8, Is.EqualTo(8u));
        });
    }

    [Test]
    public void Queue_programming_starts_the_queue_with_its_parameters()
    {
        ulong features = VirtioFeatures.VERSION_1 | VirtioFeatures.RING_EVENT_IDX;
        NegotiateFeaturesOk(features);
        Write(R.QueueSel, 1);
        Assert.That(Read(R.QueueNumMax), Is.EqualTo(128u));
        Write(R.QueueNum, 64);
        Write64(R.QueueDescLow, 0x1_0000_1000);
        Write64(R.QueueDriverLow, 0x2000);
        Write64(R.QueueDeviceLow, 0x3000);
        Write(R.QueueReady, 1);

        Assert.That(_device.Started.ContainsKey(1), Is.True);
        var (resources, negotiated) = _device.Started[1];
        Assert.Multiple(() =>
        {
            Assert.That(resources.Params, Is.EqualTo(new Vmm.Virtio.Queues.VirtqueueParams(64, 0x1_0000_1000, 0x2000, 0x3000)));
            Assert.That(negotiated, Is.EqualTo(features));
            Assert.That(resources.Memory, Is.SameAs(_memory));
            Assert.That(resources.Kick, Is.SameAs(_transport.GetKickEventFd(1)));
            Assert.That(Read(R.QueueReady), Is.EqualTo(1u));
            Assert.That(Read(R.QueueDescHigh), Is.EqualTo(1u));
        });

        Write(R.QueueReady, 0);
        Assert.That(_device.Calls, Does.Contain("StopQueue(1)"));
        Assert.That(Read(R.QueueReady), Is.Zero);
    }

    [Test]
    public void Queue_registers_of_a_missing_queue_read_zero()
    {
        Write(R.QueueSel, 2);
        Assert.That(Read(R.QueueNumMax), Is.Zero);
    }

    [Test]
    public void A_queue_is_not_started_before_FEATURES_OK_or_with_a_bad_size()
    {
        Write(R.QueueSel, 0);
        Write(R.QueueReady, 1);
        Assert.That(_device.Started, Is.Empty);

        NegotiateFeaturesOk(VirtioFeatures.VERSION_1);
        Write(R.QueueNum, 100);
        Write(R.QueueReady, 1);
        Assert.That(_device.Started, Is.Empty, "split rings need a power of two");
        Write(R.QueueNum, 256);
        Write(R.QueueReady, 1);
        Assert.That(_device.Started, Is.Empty, "larger than QueueNumMax");
    }

    [Test]
    public void Queue_writes_while_ready_are_ignored()
    {
        StartQueue0();
        Write(R.QueueNum, 16);
        Assert.That(Read(R.QueueNum), Is.EqualTo(128u));
    }

    [Test]
    public void QueueNotify_signals_the_kick_eventfd()
    {
        StartQueue0();
        Write(R.QueueNotify, 1);
        Assert.Multiple(() =>
        {
            Assert.That(_transport.GetKickEventFd(1).TryConsume(), Is.True);
            Assert.That(_transport.GetKickEventFd(0).TryConsume(), Is.False);
        });

        Write(R.QueueNotify, 0);
        Assert.That(_device.Started[0].Resources.Kick.Wait(5000), Is.True);
    }

    [Test]
    public void Status_zero_resets_device_and_registers()
    {
        StartQueue0();
        Write(R.QueueNum, 0);
        _device.RaiseConfigChanged();
        Write(R.Status, 0);

        Assert.Multiple(() =>
        {
            Assert.That(_device.Calls, Does.Contain("Reset"));
            Assert.That(Read(R.Status), Is.Zero);
            Assert.That(_transport.DriverFeatures, Is.Zero);
            Assert.That(Read(R.InterruptStatus), Is.Zero);
            Assert.That(Read(R.QueueReady), Is.Zero);
            Assert.That(Read(R.QueueNum), Is.EqualTo(128u));
            Assert.That(Read(R.QueueDescLow), Is.Zero);
        });
    }

    [Test]
    public void Config_space_is_forwarded_at_any_width()
    {
        Span<byte> b = stackalloc byte[8];
        _transport.Read(R.Config + 1, b[..1]);
        Assert.That(b[0], Is.EqualTo(0x11));
        _transport.Read(R.Config + 2, b[..2]);
        Assert.That(BinaryPrimitives.ReadUInt16LittleEndian(b), Is.EqualTo(0x1312));
        _transport.Read(R.Config + 8, b);
        Assert.That(BinaryPrimitives.ReadUInt64LittleEndian(b), Is.EqualTo(0x1f1e1d1c1b1a1918UL));

        _transport.Write(R.Config + 3, [0xaa, 0xbb]);
        Assert.Multiple(() =>
        {
            Assert.That(_device.Config[3], Is.EqualTo(0xaa));
            Assert.That(_device.Config[4], Is.EqualTo(0xbb));
            Assert.That(_device.Calls, Does.Contain("WriteConfig(3,2)"));
        });
    }

    [Test]
    public void Config_change_bumps_the_generation_and_raises_a_config_interrupt()
    {
        uint before = Read(R.ConfigGeneration);
        _device.RaiseConfigChanged();

        Assert.Multiple(() =>
        {
            Assert.That(Read(R.ConfigGeneration), Is.Not.EqualTo(before));
            Assert.That(Read(R.InterruptStatus), Is.EqualTo(R.InterruptConfigChange));
            Assert.That(_line.Count, Is.EqualTo(1));
        });
    }

    [Test]
    public void Device_fault_sets_NEEDS_RESET_and_raises_a_config_interrupt()
    {
        StartQueue0();
        _device.RaiseFault(0);

        Assert.Multiple(() =>
        {
            Assert.That(Read(R.Status) & 64, Is.EqualTo(64u));
            Assert.That(Read(R.InterruptStatus) & 2, Is.EqualTo(2u));
            Assert.That(_line.Count, Is.EqualTo(1));
        });

        Write(R.Status, 0xf);
        Assert.That(Read(R.Status) & 64, Is.EqualTo(64u), "the driver cannot clear NEEDS_RESET");
        Write(R.Status, 0);
        Assert.That(Read(R.Status), Is.Zero);
    }

    [Test]
    public void The_queue_line_sets_the_used_buffer_bit_then_raises_the_VM_line_and_ACK_clears_it()
    {
        StartQueue0();
        InterruptLine queueLine = _device.Started[0].Resources.Interrupt;
        queueLine.Raise();

        Assert.Multiple(() =>
        {
            Assert.That(queueLine.Vector, Is.EqualTo(7));
            Assert.That(Read(R.InterruptStatus), Is.EqualTo(R.InterruptUsedBuffer));
            Assert.That(_line.Count, Is.EqualTo(1));
        });

        _device.RaiseConfigChanged();
        Write(R.InterruptAck, R.InterruptUsedBuffer);
        Assert.That(Read(R.InterruptStatus), Is.EqualTo(R.InterruptConfigChange));
        Write(R.InterruptAck, R.InterruptConfigChange);
        Assert.That(Read(R.InterruptStatus), Is.Zero);
    }

    [Test]
    public void An_event_backed_VM_line_is_signalled_by_the_queue_line()
    {
        using var memory = GuestMemory.Create(1 << 20);
        using var eventFd = new EventFd();
        using var device = new FakeVirtioDevice();
        using var transport = new VirtioMmioTransport(device, memory, new EventBackedInterruptLine(9, eventFd));
        transport.Write(R.Status, Le(3));
        transport.Write(R.DriverFeaturesSel, Le(1));
        transport.Write(R.DriverFeatures, Le(1));
        transport.Write(R.Status, Le(11));
        transport.Write(R.QueueReady, Le(1));

        device.Started[0].Resources.Interrupt.Raise();

        Assert.That(eventFd.Wait(5000), Is.True);
        Span<byte> b = stackalloc byte[4];
        transport.Read(R.InterruptStatus, b);
        Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(b), Is.EqualTo(1u));
    }

    [Test]
    public void Registers_accept_only_aligned_32_bit_access()
    {
        Span<byte> b = stackalloc byte[2];
        _transport.Read(R.MagicValue, b);
        Assert.That(BinaryPrimitives.ReadUInt16LittleEndian(b), Is.Zero);
        _transport.Write(R.Status, [1, 0]);
        Assert.That(Read(R.Status), Is.Zero);
        Span<byte> c = stackalloc byte[4];
        _transport.Read(R.MagicValue + 2, c);
        Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(c), Is.Zero);
        Assert.That(_log, Has.Count.EqualTo(3));
    }

    [Test]
    public void Shared_memory_regions_read_as_absent()
    {
        Write(R.ShmSel, 0);
        Assert.That(Read(R.ShmLenLow), Is.EqualTo(0xffff_ffffu));
        Assert.That(Read(R.ShmLenHigh), Is.EqualTo(0xffff_ffffu));
    }

    [Test]
    public void QueueReset_stops_the_queue_and_restores_defaults()
    {
        StartQueue0();
        Write(R.QueueReset, 1);
        Assert.Multiple(() =>
        {
            Assert.That(_device.Calls, Does.Contain("StopQueue(0)"));
            Assert.That(Read(R.QueueReady), Is.Zero);
            Assert.That(Read(R.QueueReset), Is.Zero);
            Assert.That(Read(R.QueueDriverLow), Is.Zero);
        });
    }

    private static byte[] Le(uint v)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, v);
        return b;
    }

    private void StartQueue0()
    {
        NegotiateFeaturesOk(VirtioFeatures.VERSION_1);
        Write(R.QueueSel, 0);
        Write64(R.QueueDescLow, 0x1000);
        Write64(R.QueueDriverLow, 0x2000);
        Write64(R.QueueDeviceLow, 0x3000);
        Write(R.QueueReady, 1);
        Assert.That(_device.Started.ContainsKey(0), Is.True);
    }

    private void NegotiateFeaturesOk(ulong features)
    {
        Write(R.Status, 1);
        Write(R.Status, 3);
        AcceptFeatures(features);
        Write(R.Status, 11);
        Assert.That(Read(R.Status), Is.EqualTo(11u));
    }

    private void AcceptFeatures(ulong features)
    {
        Write(R.DriverFeaturesSel, 0);
        Write(R.DriverFeatures, (uint)features);
        Write(R.DriverFeaturesSel, 1);
        Write(R.DriverFeatures, (uint)(features >> 32));
    }

    private uint Read(uint register)
    {
        Span<byte> b = stackalloc byte[4];
        _transport.Read(register, b);
        return BinaryPrimitives.ReadUInt32LittleEndian(b);
    }

    private void Write(uint register, uint value) => _transport.Write(register, Le(value));

    private void Write64(uint lowRegister, ulong value)
    {
        Write(lowRegister, (uint)value);
        Write(lowRegister + 4, (uint)(value >> 32));
    }
}
