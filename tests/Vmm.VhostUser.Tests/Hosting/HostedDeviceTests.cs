using System.Buffers.Binary;
using Akka.Actor;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Vmm.Core.Machine;
using Vmm.Core.Memory;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Machine;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Hosting;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Tests.Hosting;

/// <summary>
/// A device as an embedding host gets it (<see cref="IManagedVmm.GetDeviceAsync"/>, no downcast):
/// its connection events, a back-end's config change reaching the guest through the transport,
/// a give-up setting DEVICE_NEEDS_RESET; and the API around it: options from configuration, an
/// immediate error without <c>WithManagedVmm</c>, the wait for a back-end not up yet, Akka's log
/// through ILogger.
/// </summary>
[TestFixture]
public sealed class HostedDeviceTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    [Test]
    public async Task The_hosted_device_raises_lost_and_restored_on_the_interface_the_host_gets()
    {
        await using BlkBackend backend = BlkBackend.Start();
        await using ManagedVmmHost host = await ManagedVmmHost.StartAsync(vm => vm
            .AddVhostUserDevice("blk0", backend.SocketPath, "blk", o => o with { ReconnectMinBackoff = TimeSpan.FromMilliseconds(20) }));
        IVhostUserDevice device = await host.Vmm.GetDeviceAsync("blk0").WaitAsync(Timeout);
        var lost = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var restored = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        device.ConnectionLost += r => lost.TrySetResult(r);
        device.ConnectionRestored += a => restored.TrySetResult(a);

        await backend.StopAsync();
        Assert.That(await lost.Task.WaitAsync(Timeout), Is.Not.Empty);
        Assert.That(device.IsConnected, Is.False);
        backend.Restart();
        Assert.That(await restored.Task.WaitAsync(Timeout), Is.GreaterThanOrEqualTo(1));
        Assert.That(device.IsConnected, Is.True);
    }

    [Test]
    public async Task A_backends_config_change_reaches_the_guest_through_the_transport()
    {
        await using BlkBackend backend = BlkBackend.Start();
        await using ManagedVmmHost host = await ManagedVmmHost.StartAsync(vm => vm.AddVhostUserDevice("blk0", backend.SocketPath, "blk"));
        IVhostUserDevice device = await host.Vmm.GetDeviceAsync("blk0").WaitAsync(Timeout);
        using Guest guest = await Guest.StartAsync(host, device);
        var changed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        guest.Driver.ConfigChanged += () => changed.TrySetResult();
        Assert.That(await guest.CapacityAsync(), Is.EqualTo((ulong)BlkBackend.Sectors));

        backend.Resize(128);
        await changed.Task.WaitAsync(Timeout);
        Assert.That(await guest.CapacityAsync(), Is.EqualTo(128UL), "the guest reads the new config");
    }

    [Test]
    public async Task A_hosted_device_that_gives_up_sets_DEVICE_NEEDS_RESET_for_the_guest()
    {
        await using BlkBackend backend = BlkBackend.Start();
        await using ManagedVmmHost host = await ManagedVmmHost.StartAsync(vm => vm
            .AddVhostUserDevice("blk0", backend.SocketPath, "blk", o => o with { Reconnect = false }));
        IVhostUserDevice device = await host.Vmm.GetDeviceAsync("blk0").WaitAsync(Timeout);
        using Guest guest = await Guest.StartAsync(host, device);
        var needsReset = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        guest.Driver.DeviceNeedsReset += () => needsReset.TrySetResult();
        var faulted = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        device.Faulted += f => faulted.TrySetResult(f.Reason);

        await backend.StopAsync();
        Assert.That(await faulted.Task.WaitAsync(Timeout), Does.Contain("reconnect is off"));
        await needsReset.Task.WaitAsync(Timeout);
        Assert.That(guest.Driver.ReadStatus() & VirtioDeviceStatus.DEVICE_NEEDS_RESET, Is.Not.Zero);
        Devices devices = await host.Vmm.GetDevicesAsync();
        Assert.That((devices.Live.Keys, devices.Failed.Select(f => f.Name)), Is.EqualTo((Array.Empty<string>(), new[] { "blk0" })).AsCollection);
    }

    [Test]
    public async Task Without_WithManagedVmm_the_VM_is_an_immediate_error_not_an_endless_wait()
    {
        await using ManagedVmmHost host = await ManagedVmmHost.StartAsync(configure: null);
        InvalidOperationException? e = await Assert.ThrowsAsync<InvalidOperationException>(
            () => host.Vmm.GetDeviceAsync("blk0").WaitAsync(Timeout));
        Assert.That(e!.Message, Does.Contain("WithManagedVmm"));
    }

    [Test]
    public async Task Options_bound_from_configuration_attach_the_devices_and_set_the_timeouts()
    {
        await using BlkBackend backend = BlkBackend.Start();
        await using ManagedVmmHost host = await ManagedVmmHost.StartAsync(
            _ => { },
            configuration: new Dictionary<string, string?>
            {
                ["ManagedVmm:AskTimeout"] = "00:00:07",
                ["ManagedVmm:Devices:disk:SocketPath"] = backend.SocketPath,
                ["ManagedVmm:Devices:disk:Type"] = "blk",
                ["ManagedVmm:Devices:disk:Queues"] = "1",
                ["ManagedVmm:Devices:disk:CommandTimeout"] = "00:00:20",
            });

        ManagedVmmOptions options = host.Services.GetRequiredService<IOptions<ManagedVmmOptions>>().Value;
        Assert.That(options.AskTimeout, Is.EqualTo(TimeSpan.FromSeconds(7)));
        Assert.That(options.Devices["disk"].ToOptions("disk").CommandTimeout, Is.EqualTo(TimeSpan.FromSeconds(20)));
        IVhostUserDevice device = await host.Vmm.GetDeviceAsync("disk").WaitAsync(Timeout);
        Assert.That((device.Name, device.DeviceId, device.QueueCount), Is.EqualTo(("disk", VirtioDeviceId.Block, 1)));
        Assert.That(device.Supervisor.Path.ToStringWithoutAddress(), Is.EqualTo("/user/vm/disk"));
    }

    [Test]
    public async Task A_device_waits_for_a_backend_that_is_not_up_at_start_when_asked_to()
    {
        await using BlkBackend backend = BlkBackend.Start();
        await backend.StopAsync();
        await using ManagedVmmHost host = await ManagedVmmHost.StartAsync(vm => vm
            .AddVhostUserDevice("blk0", backend.SocketPath, "blk", o => o with { WaitForBackend = true, ReconnectMaxBackoff = TimeSpan.FromMilliseconds(200) }));
        Task<IVhostUserDevice> device = host.Vmm.GetDeviceAsync("blk0");
        IActorRef supervisor = (await host.Vmm.GetDevicesAsync()).Live["blk0"];
        SupervisorState waiting = await supervisor.Ask<SupervisorState>(GetSupervisorState.Instance, Timeout);
        Assert.That((waiting.Phase, device.IsCompleted), Is.EqualTo((SupervisorPhase.Starting, false)));

        backend.Restart();
        Assert.That((await device.WaitAsync(Timeout)).DeviceId, Is.EqualTo(VirtioDeviceId.Block));
    }

    [Test]
    public async Task Akka_logs_through_the_hosts_ILogger()
    {
        await using BlkBackend backend = BlkBackend.Start();
        await using ManagedVmmHost host = await ManagedVmmHost.StartAsync(vm => vm.AddVhostUserDevice("gone", backend.MissingSocketPath, "blk"));
        await Assert.ThrowsAsync<VhostUserConnectException>(() => host.Vmm.GetDeviceAsync("gone").WaitAsync(Timeout));
        using var cts = new CancellationTokenSource(Timeout);
        while (!host.Logs.Any(l => l.Contains("Device gone stopped", StringComparison.Ordinal)))
        {
            await Task.Delay(20, cts.Token);
        }
    }

    /// <summary>The device on a virtio-pci slot of a VirtioMachine, with a guest driver initialised on a thread of its own (a vCPU's).</summary>
    private sealed class Guest : IDisposable
    {
        private readonly GuestMemory _memory;
        private readonly VirtioMachine _machine;

        private Guest(GuestMemory memory, VirtioMachine machine, VirtioGuestDriver driver)
        {
            _memory = memory;
            _machine = machine;
            Driver = driver;
        }

        public VirtioGuestDriver Driver { get; }

        public static async Task<Guest> StartAsync(ManagedVmmHost host, IVhostUserDevice device)
        {
            IActorRef interrupts = await host.Vmm.GetInterruptControllerAsync();
            var memory = GuestMemory.Create(16 << 20);
            var machine = new VirtioMachine(memory, GuestInterruptDelivery.FunctionBacked, interrupts);
            machine.AttachPci(device);
            var allocator = new GuestMemoryAllocator(1 << 20, memory.TotalSize - (1 << 20));
            VirtioGuestDriver driver = machine.CreateDriver(
                machine.Discover().Single(), new GuestDriverQueueFactory(memory, allocator), new VirtioDriverOptions { QueueCount = 1, QueueSize = 64 });
            await Task.Run(driver.Initialize).WaitAsync(Timeout);
            return new Guest(memory, machine, driver);
        }

        public Task<ulong> CapacityAsync() => Task.Run(() =>
        {
            var config = new byte[8];
            Driver.ReadConfig(0, config);
            return BinaryPrimitives.ReadUInt64LittleEndian(config);
        });

        public void Dispose()
        {
            try
            {
                Driver.Dispose();
            }
            catch (Exception e) when (e is VhostUserConnectionLostException)
            {
            }

            _machine.Dispose();
            _memory.Dispose();
        }
    }
}
