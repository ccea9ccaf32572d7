using Akka.Actor;
using NUnit.Framework;
using Vmm.Core.Interrupts;
using Vmm.Core.Machine;
using Vmm.Core.Memory;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Machine;
using Vmm.Virtio.Spec;
using Vmm.Virtio.Transport;
using R = Vmm.Virtio.Spec.VirtioMmioRegisters;

namespace Vmm.Virtio.Tests.Transport;

[TestFixture]
public sealed class VirtioGuestDriverTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(5);

    private ActorSystem _system = null!;
    private GuestMemory _memory = null!;

    public static IEnumerable<TestCaseData> Transports()
    {
        foreach (VirtioTransportKind kind in new[] { VirtioTransportKind.Mmio, VirtioTransportKind.Pci })
        {
            foreach (GuestInterruptDelivery delivery in new[] { GuestInterruptDelivery.FunctionBacked, GuestInterruptDelivery.EventBacked })
            {
                yield return new TestCaseData(kind, delivery);
            }
        }
    }

    [OneTimeSetUp]
    public void StartSystem() => _system = ActorSystem.Create("guest-driver-tests");

    [OneTimeTearDown]
    public async Task StopSystem()
    {
        await _system.Terminate();
        _system.Dispose();
    }

    [SetUp]
    public void SetUp() => _memory = GuestMemory.Create(1 << 20);

    [TearDown]
    public void TearDown() => _memory.Dispose();

    [Test]
    public void Discovery_finds_mmio_and_pci_devices_where_the_layout_puts_them()
    {
        using var machine = new VirtioMachine(_memory, GuestInterruptDelivery.EventBacked);
        using var blk = new FakeVirtioDevice();
        using var rng = new FakeVirtioDevice { DeviceId = VirtioDeviceId.Entropy, QueueCount = 1 };
        using var rng2 = new FakeVirtioDevice { DeviceId = VirtioDeviceId.Entropy, QueueCount = 1 };
        machine.AttachMmio(blk);
        machine.AttachMmio(rng);
        machine.AttachPci(rng2);

        IReadOnlyList<VirtioDeviceLocation> found = machine.Discover();

        Assert.That(found, Is.EqualTo(new[]
        {
            new VirtioDeviceLocation(VirtioTransportKind.Mmio, 0, 0xfeb0_0000, VirtioDeviceId.Block, 5),
            new VirtioDeviceLocation(VirtioTransportKind.Mmio, 1, 0xfeb0_0200, VirtioDeviceId.Entropy, 6),
            new VirtioDeviceLocation(VirtioTransportKind.Pci, 0, 0xe000_0000, VirtioDeviceId.Entropy, -1),
        }));
    }

    [Test]
    public void Mmio_init_runs_the_linux_sequence_through_registers()
    {
        using var device = new FakeVirtioDevice();
        using var transport = new VirtioMmioTransport(device, _memory, new CountingLine().Line);
        var bus = new MmioBus();
        var recorder = new RecordingMmio(transport);
        bus.Map(VirtioMachineLayout.MmioWindow(0), VirtioMachineLayout.MmioWindowSize, recorder, "virtio-mmio0");
        using var interrupts = new GuestInterruptEvents();
        var queues = new FakeQueueFactory();
        VirtioDeviceLocation location = VirtioDeviceLocator.Discover(bus).Single();
        using var driver = new VirtioGuestDriver(bus, location, queues, interrupts, new VirtioDriverOptions
        {
            Features = FakeVirtioDevice.DeviceSpecificFeature | (1UL << 6),
            EventIndex = false,
            QueueSize = 100,
        });

        driver.Initialize();

        var writes = recorder.Writes;
        List<int> statusAt = [.. writes.Select((w, i) => (w, i)).Where(x => x.w.Offset == R.Status).Select(x => x.i)];
        Assert.That(statusAt.Select(i => writes[i].Value), Is.EqualTo(new ulong[] { 0, 1, 3, 11, 15 }));
        int featuresWrite = writes.ToList().FindIndex(w => w.Offset == R.DriverFeatures);
        List<int> readyAt = [.. writes.Select((w, i) => (w, i)).Where(x => x.w.Offset == R.QueueReady).Select(x => x.i)];
        ulong negotiated = FakeVirtioDevice.DeviceSpecificFeature | VirtioFeatures.VERSION_1 | VirtioFeatures.RING_INDIRECT_DESC;
        Assert.Multiple(() =>
        {
            Assert.That(featuresWrite, Is.GreaterThan(statusAt[2]).And.LessThan(statusAt[3]), "features between DRIVER and FEATURES_OK");
            Assert.That(readyAt, Has.Count.EqualTo(2));
            Assert.That(readyAt, Has.All.GreaterThan(statusAt[3]).And.All.LessThan(statusAt[4]), "queues between FEATURES_OK and DRIVER_OK");
            Assert.That(device.Calls, Is.EqualTo(new[] { "Reset", "StartQueue(0)", "StartQueue(1)" }));
            Assert.That(driver.NegotiatedFeatures, Is.EqualTo(negotiated));
            Assert.That(transport.DriverFeatures, Is.EqualTo(negotiated));
            Assert.That(device.Started[1].Features, Is.EqualTo(negotiated));
            Assert.That(device.Started[1].Resources.Params, Is.EqualTo(queues.Made[1].Params));
            Assert.That(queues.Made.Select(q => q.Size), Is.EqualTo(new ushort[] { 64, 64 }), "min(128, 100) rounded to a power of two");
            Assert.That(driver.Queues, Has.Count.EqualTo(2));
            Assert.That(driver.ReadStatus(), Is.EqualTo((VirtioDeviceStatus)15));
        });
    }

    [Test]
    public void Pci_init_runs_the_linux_sequence_through_the_common_config()
    {
        using var machine = new VirtioMachine(_memory, GuestInterruptDelivery.EventBacked);
        using var device = new FakeVirtioDevice();
        VirtioPciTransport transport = machine.AttachPci(device);
        var recorder = new RecordingMmio(transport);
        machine.Bus.Unmap(transport);
        machine.Bus.Map(transport.Bar0Address, VirtioPciLayout.Bar0Size, recorder, "recorded BAR0");
        var queues = new FakeQueueFactory();
        using VirtioGuestDriver driver = machine.CreateDriver(machine.Discover().Single(), queues);

        driver.Initialize();

        var writes = recorder.Writes;
        List<int> statusAt = [.. writes.Select((w, i) => (w, i)).Where(x => x.w.Offset == VirtioPciLayout.CommonDeviceStatus).Select(x => x.i)];
        List<int> enableAt = [.. writes.Select((w, i) => (w, i)).Where(x => x.w.Offset == VirtioPciLayout.CommonQueueEnable).Select(x => x.i)];
        int featuresWrite = writes.ToList().FindIndex(w => w.Offset == VirtioPciLayout.CommonDriverFeature);
        Assert.Multiple(() =>
        {
            Assert.That(statusAt.Select(i => writes[i].Value), Is.EqualTo(new ulong[] { 0, 1, 3, 11, 15 }));
            Assert.That(featuresWrite, Is.GreaterThan(statusAt[2]).And.LessThan(statusAt[3]));
            Assert.That(enableAt, Has.Count.EqualTo(2));
            Assert.That(enableAt, Has.All.GreaterThan(statusAt[3]).And.All.LessThan(statusAt[4]));
            Assert.That(device.Calls, Is.EqualTo(new[] { "Reset", "StartQueue(0)", "StartQueue(1)" }));
            Assert.That(transport.MsixEnabled, Is.True);
            Assert.That(device.Started[0].Resources.Interrupt, Is.SameAs(transport.GetQueueInterrupt(0)));
            Assert.That(device.Started[0].Resources.Interrupt.Vector, Is.EqualTo(driver.Queues[0].Vector));
            Assert.That(queues.Made.Select(q => q.Size), Is.EqualTo(new ushort[] { 128, 128 }));
        });
    }

    [Test]
    public void Pci_init_programs_MSIX_in_the_linux_order()
    {
        using var machine = new VirtioMachine(_memory, GuestInterruptDelivery.EventBacked);
        using var device = new FakeVirtioDevice();
        VirtioPciTransport transport = machine.AttachPci(device);
        var bar0 = new RecordingMmio(transport);
        var config = new RecordingMmio(transport.ConfigSpace);
        machine.Bus.Unmap(transport);
        machine.Bus.Unmap(transport.ConfigSpace);
        machine.Bus.Map(transport.Bar0Address, VirtioPciLayout.Bar0Size, bar0, "recorded BAR0");
        machine.Bus.Map(VirtioMachineLayout.PciConfigAddress(0), VirtioMachineLayout.PciConfigSize, config, "recorded config");
        using VirtioGuestDriver driver = machine.CreateDriver(machine.Discover().Single(), new FakeQueueFactory());

        driver.Initialize();

        int msixControl = FindMsixControl(transport);
        List<ulong> control = [.. config.Writes.Where(w => w.Offset == (ulong)msixControl).Select(w => w.Value)];
        List<(ulong Offset, ulong Value)> table = [.. bar0.Writes.Where(w => w.Offset is >= VirtioPciLayout.Bar0MsixTableOffset and < VirtioPciLayout.Bar0MsixPbaOffset)];
        List<ulong> common = [.. bar0.Writes.Where(w => w.Offset < VirtioPciLayout.Bar0IsrOffset).Select(w => w.Offset)];
        IReadOnlyList<int> vectors = [driver.Queues[0].Vector - 1, driver.Queues[0].Vector, driver.Queues[1].Vector];
        static int Entry(ulong offset) => (int)((offset - VirtioPciLayout.Bar0MsixTableOffset) / VirtioPciLayout.MsixEntrySize);
        static ulong Field(ulong offset) => (offset - VirtioPciLayout.Bar0MsixTableOffset) % VirtioPciLayout.MsixEntrySize;
        var all = bar0.Writes;
        int Unmask(int entry) => all.ToList().FindIndex(w => w.Offset == VirtioPciLayout.Bar0MsixTableOffset + (ulong)(entry * VirtioPciLayout.MsixEntrySize) + VirtioPciLayout.MsixEntryVectorControl && w.Value == 0);
        int Write(int field, int nth) => all.Select((w, i) => (w, i)).Where(x => x.w.Offset == (ulong)field).Select(x => x.i).ElementAt(nth);
        int firstMessage = table.FindIndex(w => Field(w.Offset) != VirtioPciLayout.MsixEntryVectorControl);
        int firstUnmask = table.FindIndex(w => Field(w.Offset) == VirtioPciLayout.MsixEntryVectorControl && w.Value == 0);

        Assert.Multiple(() =>
        {
            Assert.That(control, Is.EqualTo(new ulong[]
            {
                VirtioPciLayout.MsixControlEnable | VirtioPciLayout.MsixControlFunctionMask | 2,
                VirtioPciLayout.MsixControlEnable | 2,
            }), "enable with the function masked, then clear the function mask");
            Assert.That(table.Take(3).Select(w => (Entry(w.Offset), Field(w.Offset), w.Value)), Is.EqualTo(new[]
            {
                (0, (ulong)VirtioPciLayout.MsixEntryVectorControl, 1UL),
                (1, (ulong)VirtioPciLayout.MsixEntryVectorControl, 1UL),
                (2, (ulong)VirtioPciLayout.MsixEntryVectorControl, 1UL),
            }), "every entry masked first");
            Assert.That(firstMessage, Is.LessThan(firstUnmask), "messages written while masked");
            Assert.That(
                table.Where(w => Field(w.Offset) == VirtioPciLayout.MsixEntryData).Select(w => ((int)Entry(w.Offset), (int)w.Value)),
                Is.EqualTo(vectors.Select((v, i) => (i, v))),
                "data = the vector the driver allocated");
            Assert.That(
                table.Where(w => Field(w.Offset) == VirtioPciLayout.MsixEntryAddressLow).Select(w => w.Value),
                Is.All.EqualTo(MsiMessage.X86AddressBase));
            Assert.That(
                table.Skip(firstUnmask).Select(w => (Entry(w.Offset), w.Value)),
                Is.EqualTo(new[] { (0, 0UL), (1, 0UL), (2, 0UL) }),
                "the config entry, then each queue's, unmasked");
            Assert.That(vectors[0], Is.EqualTo(VirtioMachineLayout.PciFirstVector));
            Assert.That(transport.MsixVectors.Select(l => l.IsMasked), Is.All.False);
            Assert.That(common, Does.Contain((ulong)VirtioPciLayout.CommonConfigMsixVector), "configuration changes mapped");
            Assert.That(Unmask(1), Is.GreaterThan(Write(VirtioPciLayout.CommonQueueEnable, 0)), "queue 0's entry unmasked once the queue is set up");
            Assert.That(Unmask(2), Is.GreaterThan(Write(VirtioPciLayout.CommonQueueEnable, 1)), "queue 1's entry unmasked once the queue is set up");
            Assert.That(Write(VirtioPciLayout.CommonConfigMsixVector, 0), Is.GreaterThan(Unmask(0)), "config entry unmasked, then mapped");
        });

        driver.MaskQueueVector(1, true);
        Assert.That(transport.MsixVectors[2].IsMasked, Is.True);
        driver.SetFunctionMask(true);
        Assert.That(transport.MsixFunctionMasked, Is.True);
        Assert.That(transport.MsixVectors[1].IsMasked, Is.True);
        driver.SetFunctionMask(false);
        driver.MaskQueueVector(1, false);
        Assert.That(transport.MsixVectors.Select(l => l.IsMasked), Is.All.False);

        driver.Shutdown();

        Assert.That(transport.MsixEnabled, Is.False, "MSI-X disabled on shutdown");
        Assert.That(transport.MsixVectors.Select(l => l.IsMasked), Is.All.True, "every entry masked on shutdown");
    }

    [Test]
    public void A_device_that_clears_FEATURES_OK_fails_initialisation_clearly()
    {
        using var device = new FakeVirtioDevice();
        using var transport = new VirtioMmioTransport(device, _memory, new CountingLine().Line);
        var bus = new MmioBus();
        var recorder = new RecordingMmio(transport)
        {
            ReadFilter = (offset, data) =>
            {
                if (offset == R.Status)
                {
                    data[0] &= unchecked((byte)~(byte)VirtioDeviceStatus.FEATURES_OK);
                }

                return true;
            },
        };
        bus.Map(VirtioMachineLayout.MmioWindow(0), VirtioMachineLayout.MmioWindowSize, recorder, "virtio-mmio0");
        using var interrupts = new GuestInterruptEvents();
        using var driver = new VirtioGuestDriver(bus, VirtioDeviceLocator.Discover(bus).Single(), new FakeQueueFactory(), interrupts, new VirtioDriverOptions());

        var e = Assert.Throws<VirtioDriverException>(driver.Initialize);

        Assert.Multiple(() =>
        {
            Assert.That(e!.Message, Does.Contain("FEATURES_OK"));
            Assert.That(transport.Status & VirtioDeviceStatus.FAILED, Is.EqualTo(VirtioDeviceStatus.FAILED));
            Assert.That(device.Started, Is.Empty);
        });
    }

    [TestCaseSource(nameof(Transports))]
    public void Completion_wait_wakes_on_the_queue_interrupt(VirtioTransportKind kind, GuestInterruptDelivery delivery)
    {
        using var machine = NewMachine(delivery);
        using var device = new FakeVirtioDevice();
        var queues = new FakeQueueFactory();
        using VirtioGuestDriver driver = Attach(machine, device, kind, queues);
        driver.Initialize();

        VirtioDriverQueue queue = driver.Queues[1];
        Task<(bool Got, object? Token, uint Written)> waiter = Task.Factory.StartNew(
            () => (queue.WaitForCompletion(Timeout, out object? t, out uint n), t, n),
            TaskCreationOptions.LongRunning);
        Thread.Sleep(50);
        Assert.That(waiter.IsCompleted, Is.False, "nothing completed yet");

        queues.Made[1].Used.Enqueue(("request", 512));
        InterruptLine line = device.Started[1].Resources.Interrupt;
        line.Raise();

        Assert.That(waiter.Wait(Timeout), Is.True, "the wait woke");
        Assert.Multiple(() =>
        {
            Assert.That(waiter.Result.Got, Is.True);
            Assert.That(waiter.Result.Token, Is.EqualTo("request"));
            Assert.That(waiter.Result.Written, Is.EqualTo(512u));
        });

        if (kind == VirtioTransportKind.Pci && delivery == GuestInterruptDelivery.EventBacked)
        {
            Assert.That(line.EventFd, Is.Not.Null, "per-queue MSI-X vectors are handed to the device as eventfds");
        }
    }

    [TestCaseSource(nameof(Transports))]
    public void Device_needs_reset_is_reported_and_reinitialisation_recovers(VirtioTransportKind kind, GuestInterruptDelivery delivery)
    {
        using var machine = NewMachine(delivery);
        using var device = new FakeVirtioDevice();
        using VirtioGuestDriver driver = Attach(machine, device, kind, new FakeQueueFactory());
        using var needsReset = new ManualResetEventSlim();
        using var configChanged = new ManualResetEventSlim();
        driver.DeviceNeedsReset += needsReset.Set;
        driver.ConfigChanged += configChanged.Set;
        driver.Initialize();

        device.RaiseConfigChanged();
        Assert.That(configChanged.Wait(Timeout), Is.True, "config change delivered");

        device.RaiseFault(0);
        Assert.That(needsReset.Wait(Timeout), Is.True, "NEEDS_RESET delivered");
        Assert.That(driver.ReadStatus() & VirtioDeviceStatus.DEVICE_NEEDS_RESET, Is.Not.EqualTo(VirtioDeviceStatus.None));

        driver.ResetAndReinitialize();

        Assert.Multiple(() =>
        {
            Assert.That(driver.ReadStatus(), Is.EqualTo((VirtioDeviceStatus)15));
            Assert.That(device.Calls.Count(c => c == "Reset"), Is.EqualTo(2));
            Assert.That(device.Started.Keys, Is.EquivalentTo(new[] { 0, 1 }));
        });
    }

    [Test]
    public void Pci_without_MSIX_falls_back_to_INTx_and_the_ISR()
    {
        using var device = new FakeVirtioDevice();
        using var interrupts = new GuestInterruptEvents();
        var intx = new EventBackedInterruptLine(10, interrupts.Get(10));
        ulong bar0 = VirtioMachineLayout.PciBar0Address(0);
        using var transport = new VirtioPciTransport(device, _memory, bar0, 0, _ => null, intx);
        var bus = new MmioBus();
        bus.Map(VirtioMachineLayout.PciConfigAddress(0), VirtioMachineLayout.PciConfigSize, transport.ConfigSpace, "pci0:0 config");
        bus.Map(bar0, VirtioPciLayout.Bar0Size, transport, "pci0:0 BAR0");
        var queues = new FakeQueueFactory();
        using var driver = new VirtioGuestDriver(bus, VirtioDeviceLocator.Discover(bus).Single(), queues, interrupts, new VirtioDriverOptions());
        using var configChanged = new ManualResetEventSlim();
        driver.ConfigChanged += configChanged.Set;
        driver.Initialize();

        Assert.That(transport.MsixEnabled, Is.False);
        Assert.That(driver.Queues[0].Vector, Is.EqualTo(10));
        Task<object?> waiter = Task.Factory.StartNew(
            () => driver.Queues[0].WaitForCompletion(Timeout, out object? t, out _) ? t : null,
            TaskCreationOptions.LongRunning);
        Thread.Sleep(50);
        queues.Made[0].Used.Enqueue(("intx", 1));
        device.Started[0].Resources.Interrupt.Raise();
        Assert.That(waiter.Wait(Timeout), Is.True);
        Assert.That(waiter.Result, Is.EqualTo("intx"));

        device.RaiseConfigChanged();
        Assert.That(configChanged.Wait(Timeout), Is.True);
    }

    [Test]
    public void Notify_writes_the_register_only_when_the_device_wants_a_kick()
    {
        using var machine = NewMachine(GuestInterruptDelivery.EventBacked);
        using var device = new FakeVirtioDevice();
        var queues = new FakeQueueFactory();
        using VirtioGuestDriver driver = Attach(machine, device, VirtioTransportKind.Mmio, queues);
        driver.Initialize();
        var kick = device.Started[0].Resources.Kick;

        queues.Made[0].KickWanted = false;
        Assert.That(driver.Queues[0].Notify(), Is.False);
        Assert.That(kick.TryConsume(), Is.False);

        queues.Made[0].KickWanted = true;
        Assert.That(driver.Queues[0].Notify(), Is.True);
        Assert.That(kick.Wait(5000), Is.True);
    }

    [TestCase(VirtioTransportKind.Mmio)]
    [TestCase(VirtioTransportKind.Pci)]
    public void ReadConfig_retries_while_the_generation_changes(VirtioTransportKind kind)
    {
        using var machine = NewMachine(GuestInterruptDelivery.EventBacked);
        using var device = new FakeVirtioDevice();
        using VirtioGuestDriver driver = Attach(machine, device, kind, new FakeQueueFactory());
        driver.Initialize();
        int changes = 0;
        device.AfterReadConfig = () =>
        {
            if (changes++ == 0)
            {
                device.Config[0] = 0x77;
                device.RaiseConfigChanged();
            }
        };

        byte[] data = new byte[4];
        driver.ReadConfig(0, data);

        Assert.Multiple(() =>
        {
            Assert.That(data[0], Is.EqualTo(0x77));
            Assert.That(device.Calls.Count(c => c.StartsWith("ReadConfig(0,", StringComparison.Ordinal)), Is.EqualTo(2));
        });
    }

    [TestCase(VirtioTransportKind.Mmio)]
    [TestCase(VirtioTransportKind.Pci)]
    public void Shutdown_writes_status_zero(VirtioTransportKind kind)
    {
        using var machine = NewMachine(GuestInterruptDelivery.EventBacked);
        using var device = new FakeVirtioDevice();
        using VirtioGuestDriver driver = Attach(machine, device, kind, new FakeQueueFactory());
        driver.Initialize();

        driver.Shutdown();

        Assert.Multiple(() =>
        {
            Assert.That(driver.ReadStatus(), Is.EqualTo(VirtioDeviceStatus.None));
            Assert.That(device.Calls[^1], Is.EqualTo("Reset"));
            Assert.That(device.Started, Is.Empty);
            Assert.That(driver.IsRunning, Is.False);
        });
    }

    private static int FindMsixControl(VirtioPciTransport transport)
    {
        Span<byte> b = stackalloc byte[1];
        transport.ConfigSpace.Read(VirtioPciLayout.PciCapabilitiesPointer, b);
        int cap = b[0];
        while (cap != 0)
        {
            transport.ConfigSpace.Read((ulong)cap, b);
            if (b[0] == VirtioPciLayout.PciCapIdMsix)
            {
                return cap + VirtioPciLayout.MsixMessageControl;
            }

            transport.ConfigSpace.Read((ulong)cap + 1, b);
            cap = b[0];
        }

        throw new AssertionException("no MSI-X capability");
    }

    private static VirtioGuestDriver Attach(VirtioMachine machine, FakeVirtioDevice device, VirtioTransportKind kind, IDriverQueueFactory queues)
    {
        if (kind == VirtioTransportKind.Mmio)
        {
            machine.AttachMmio(device);
        }
        else
        {
            machine.AttachPci(device);
        }

        return machine.CreateDriver(machine.Discover().Single(), queues);
    }

    private VirtioMachine NewMachine(GuestInterruptDelivery delivery)
    {
        IActorRef? controller = delivery == GuestInterruptDelivery.FunctionBacked
            ? _system.ActorOf(InterruptControllerActor.Props())
            : null;
        return new VirtioMachine(_memory, delivery, controller);
    }
}
