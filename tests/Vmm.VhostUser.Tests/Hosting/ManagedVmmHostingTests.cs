using System.Buffers.Binary;
using Akka.Actor;
using Akka.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Vmm.Core.Interrupts;
using Vmm.Core.Machine;
using Vmm.Virtio;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Hosting;

namespace Vmm.VhostUser.Tests.Hosting;

/// <summary>WithManagedVmm under Akka.Hosting, against our back-end served in this process.</summary>
[TestFixture]
public sealed class ManagedVmmHostingTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    [Test]
    public async Task The_VM_actor_and_its_interrupt_controller_are_registered_for_IRequiredActor()
    {
        await using ManagedVmmHost host = await ManagedVmmHost.StartAsync(_ => { });

        IActorRef vm = await host.Registry.GetAsync<VmKey>();
        IActorRef required = await host.Services.GetRequiredService<IRequiredActor<VmKey>>().GetAsync();
        IActorRef controller = await host.Vmm.GetInterruptControllerAsync();
        IActorRef registered = await host.Services.GetRequiredService<IRequiredActor<InterruptControllerKey>>().GetAsync();

        Assert.Multiple(() =>
        {
            Assert.That(vm.Path.ToStringWithoutAddress(), Is.EqualTo("/user/vm"));
            Assert.That(required, Is.EqualTo(vm));
            Assert.That(controller.Path.ToStringWithoutAddress(), Is.EqualTo("/user/vm/" + VmActor.InterruptsName));
            Assert.That(registered, Is.EqualTo(controller));
        });
    }

    [Test]
    public async Task A_device_is_handed_out_once_its_handshake_with_our_backend_completes()
    {
        await using BlkBackend backend = BlkBackend.Start(queues: 2);
        await using ManagedVmmHost host = await ManagedVmmHost.StartAsync(vm => vm
            .AddVhostUserDevice("blk0", backend.SocketPath, VirtioDeviceId.Block, o => o with { Queues = 2 }));

        using var cts = new CancellationTokenSource(Timeout);
        IVhostUserDevice device = await host.Vmm.GetDeviceAsync("blk0", cts.Token);
        IVhostUserDevice again = await host.Vmm.GetDeviceAsync("blk0", cts.Token);

        // IVirtioDevice calls block on the device's actors: a vCPU-like thread, not the test's.
        byte[] config = await Task.Run(() =>
        {
            var c = new byte[VirtioBlkConfig.Size];
            device.ReadConfig(0, c);
            return c;
        });

        Devices devices = await host.Vmm.GetDevicesAsync(cts.Token);
        Assert.Multiple(() =>
        {
            Assert.That(again, Is.SameAs(device));
            Assert.That(device.DeviceId, Is.EqualTo(VirtioDeviceId.Block));
            Assert.That(device.QueueCount, Is.EqualTo(2));
            Assert.That(BinaryPrimitives.ReadUInt64LittleEndian(config), Is.EqualTo((ulong)BlkBackend.Sectors));
            Assert.That(devices.Live.Keys, Is.EquivalentTo(new[] { "blk0" }));
            Assert.That(device.Supervisor, Is.EqualTo(devices.Live["blk0"]));
            Assert.That(device.Name, Is.EqualTo("blk0"));
            Assert.That(devices.Live["blk0"].Path.ToStringWithoutAddress(), Is.EqualTo("/user/vm/blk0"));
        });
    }

    [Test]
    public async Task A_device_whose_backend_is_missing_fails_and_the_VM_lives_on()
    {
        await using BlkBackend backend = BlkBackend.Start();
        await using ManagedVmmHost host = await ManagedVmmHost.StartAsync(vm => vm
            .AddVhostUserDevice("gone", backend.MissingSocketPath, "blk")
            .AddVhostUserDevice("blk0", backend.SocketPath, "blk"));

        using var cts = new CancellationTokenSource(Timeout);
        VhostUserConnectException? error = await Assert.ThrowsAsync<VhostUserConnectException>(() => host.Vmm.GetDeviceAsync("gone", cts.Token));
        Assert.That(error!.Failure, Is.EqualTo(VhostUserConnectFailure.SocketMissing));

        // DeviceFailed reached the VmActor (it keeps the failures), which still answers and still has its other device.
        Devices devices = await host.Vmm.GetDevicesAsync(cts.Token);
        while (!devices.Failed.Any(f => f.Name == "gone"))
        {
            await Task.Delay(20, cts.Token);
            devices = await host.Vmm.GetDevicesAsync(cts.Token);
        }

        IActorRef vm = await host.Registry.GetAsync<VmKey>(cts.Token);
        ActorIdentity identity = await vm.Ask<ActorIdentity>(new Identify(1), Timeout, cts.Token);
        IVirtioDevice healthy = await host.Vmm.GetDeviceAsync("blk0", cts.Token);
        Assert.Multiple(() =>
        {
            Assert.That(identity.Subject, Is.EqualTo(vm));
            Assert.That(devices.Live.Keys, Does.Not.Contain("gone"));
            Assert.That(devices.Failed.Single(f => f.Name == "gone").Reason, Is.Not.Empty);
            Assert.That(healthy.DeviceId, Is.EqualTo(VirtioDeviceId.Block));
        });
    }

    [Test]
    public async Task A_hosted_service_gets_the_VM_and_a_device_in_ExecuteAsync()
    {
        await using BlkBackend backend = BlkBackend.Start();
        await using ManagedVmmHost host = await ManagedVmmHost.StartAsync(
            vm => vm.AddVhostUserDevice("blk0", backend.SocketPath, "blk"),
            services => services.AddHostedService<DeviceUser>());

        DeviceUser user = host.Services.GetServices<Microsoft.Extensions.Hosting.IHostedService>().OfType<DeviceUser>().Single();
        (IActorRef vm, IVirtioDevice device) = await user.Found.Task.WaitAsync(Timeout);
        Assert.Multiple(() =>
        {
            Assert.That(vm.Path.Name, Is.EqualTo("vm"));
            Assert.That(device.DeviceId, Is.EqualTo(VirtioDeviceId.Block));
        });
    }

    [Test]
    public async Task An_unknown_device_name_is_a_KeyNotFoundException()
    {
        await using ManagedVmmHost host = await ManagedVmmHost.StartAsync(_ => { });
        await Assert.ThrowsAsync<KeyNotFoundException>(() => host.Vmm.GetDeviceAsync("nope"));
    }

    [Test]
    public async Task The_hosts_interrupt_sink_receives_what_the_controller_is_told_to_raise()
    {
        var sink = new RecordingSink();
        await using ManagedVmmHost host = await ManagedVmmHost.StartAsync(vm => vm.WithInterruptSink(sink));

        IActorRef controller = await host.Vmm.GetInterruptControllerAsync();
        controller.Tell(new RaiseInterrupt(65));
        controller.Tell(new RaiseInterrupt(66));

        Assert.That(await sink.Next.Reader.ReadAsync().AsTask().WaitAsync(Timeout), Is.EqualTo(65));
        Assert.That(await sink.Next.Reader.ReadAsync().AsTask().WaitAsync(Timeout), Is.EqualTo(66));
    }

    [Test]
    public void The_builder_rejects_duplicate_reserved_and_invalid_names_and_unknown_types()
    {
        var vm = new ManagedVmmBuilder().AddVhostUserDevice("blk0", "/tmp/a.sock", VirtioDeviceId.Block);
        Assert.Multiple(() =>
        {
            Assert.That(() => vm.AddVhostUserDevice("blk0", "/tmp/b.sock", VirtioDeviceId.Block), Throws.ArgumentException);
            Assert.That(() => vm.AddVhostUserDevice(VmActor.InterruptsName, "/tmp/b.sock", VirtioDeviceId.Block), Throws.ArgumentException);
            Assert.That(() => vm.AddVhostUserDevice("a/b", "/tmp/b.sock", VirtioDeviceId.Block), Throws.ArgumentException);
            Assert.That(() => vm.AddVhostUserDevice("blk1", "/tmp/b.sock", "floppy"), Throws.ArgumentException);
            Assert.That(() => vm.WithActorName("$vm"), Throws.ArgumentException);
        });
    }

    [Test]
    public void The_device_name_wins_over_one_set_in_configure()
    {
        var vm = new ManagedVmmBuilder().AddVhostUserDevice("disk", "/tmp/a.sock", "blk", o => o with { Name = "other", Queues = 2 });
        VhostUserDeviceOptions options = vm.Devices.Single();
        Assert.Multiple(() =>
        {
            Assert.That(options.Name, Is.EqualTo("disk"));
            Assert.That(options.Queues, Is.EqualTo(2));
            Assert.That(options.DeviceId, Is.EqualTo(VirtioDeviceId.Block));
        });
    }

    /// <summary>A consumer as Akka.Hosting intends: IRequiredActor&lt;VmKey&gt;, GetAsync(ct) in the service.</summary>
    private sealed class DeviceUser(IRequiredActor<VmKey> vm, IManagedVmm vmm) : Microsoft.Extensions.Hosting.BackgroundService
    {
        public TaskCompletionSource<(IActorRef Vm, IVirtioDevice Device)> Found { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        protected override async Task ExecuteAsync(CancellationToken stoppingToken)
        {
            try
            {
                IActorRef actor = await vm.GetAsync(stoppingToken);
                Found.TrySetResult((actor, await vmm.GetDeviceAsync("blk0", stoppingToken)));
            }
            catch (Exception e)
            {
                Found.TrySetException(e);
            }
        }
    }

    private sealed class RecordingSink : IInterruptSink
    {
        public System.Threading.Channels.Channel<int> Next { get; } = System.Threading.Channels.Channel.CreateUnbounded<int>();

        public void Deliver(int vector) => Next.Writer.TryWrite(vector);
    }
}
