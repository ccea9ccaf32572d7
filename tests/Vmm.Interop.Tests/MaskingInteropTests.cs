using Akka.Actor;
using Vmm.Host.Run;
using Vmm.Interop.Tests.Harness;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Machine;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;
using GuestDevice = Vmm.Host.Run.GuestDevice;

namespace Vmm.Interop.Tests;

/// <summary>
/// The guest driver masks and unmasks its queue's MSI-X vector (and the whole function) hundreds
/// of times while a verify runs against a real back-end (ours and qemu-storage-daemon), as Linux
/// does on affinity changes. Each change re-routes the back-end's call (SET_VRING_CALL: the
/// vector's eventfd while unmasked, a proxy while masked); every completion's interrupt must still
/// arrive (held pending while masked, delivered once on the unmask: a lost one stalls the verify
/// and fails it), and the data must verify.
/// </summary>
[Category("Interop")]
public sealed class MaskingInteropTests : InteropTest
{
    const int MinimumToggles = 400;

    [TestCase(BackendKind.Vmm, GuestInterruptDelivery.EventBacked)]
    [TestCase(BackendKind.StorageDaemon, GuestInterruptDelivery.EventBacked)]
    [TestCase(BackendKind.StorageDaemon, GuestInterruptDelivery.FunctionBacked)]
    public async Task A_verify_passes_while_the_guest_masks_and_unmasks_the_queue_vector_hundreds_of_times(BackendKind kind, GuestInterruptDelivery delivery)
    {
        var image = TestDisk.Create(PathIn("disk.img"), 8, prefillMiB: 0);
        var socket = PathIn("blk.sock");
        await StartBlkAsync(kind, image, socket);
        var options = new VhostUserDeviceOptions(socket, VirtioDeviceId.Block) { Name = "blk0", CommandTimeout = TimeSpan.FromSeconds(60) };
        using var vm = GuestVm.Start(new RunOptions
        {
            Devices = [new HostedBlkSource(options)],
            MemorySize = 64UL << 20,
            Transport = VirtioTransportKind.Pci,
            Delivery = delivery,
            IoDepth = 16,
            BlockSize = 4096,
        });
        GuestDevice device = vm.Devices[0];
        Assert.That(device.Driver.UsesMsix, Is.True);

        int toggles = 0;
        using var stop = new CancellationTokenSource();
        var masker = Task.Factory.StartNew(
            () =>
            {
                var random = new Random(7);
                while (!stop.IsCancellationRequested)
                {
                    // Mostly the queue's own entry, sometimes the whole function (Linux masks both ways).
                    bool function = random.Next(4) == 0;
                    Mask(device.Driver, function, true);
                    Thread.SpinWait(random.Next(20_000));
                    Mask(device.Driver, function, false);
                    Interlocked.Increment(ref toggles);
                    Thread.SpinWait(random.Next(20_000));
                }
            },
            TaskCreationOptions.LongRunning);

        int rounds = 0;
        try
        {
            while (Volatile.Read(ref toggles) < MinimumToggles || rounds < 2)
            {
                Assert.That(rounds, Is.LessThan(1000), "the masker did not get to run");
                string result = await Task.Run(() => Workloads.VerifyBlk(vm, new BlkGuest(device, vm.Memory, vm.Allocator)));
                Assert.That(result, Does.EndWith("equal"));
                rounds++;
            }
        }
        finally
        {
            await stop.CancelAsync();
            await masker;
        }

        QueueStatus status = await QueueStatusAsync(vm, device);
        TestContext.Out.WriteLine($"{rounds} verify rounds, {toggles} mask toggles; queue 0: {status}");
        if (delivery == GuestInterruptDelivery.EventBacked)
        {
            // Each mask and each unmask moved the back-end's call (a masked function moves it too).
            Assert.That(status.Reroutes, Is.GreaterThanOrEqualTo(2L * MinimumToggles * 3 / 4), "the call followed the mask");
            Assert.That(status.Proxied, Is.False, "unmasked at the end: back on the vector's eventfd");
        }
        else
        {
            Assert.That(status.Proxied, Is.True, "function-backed: always through the notifier loop");
        }
    }

    static void Mask(VirtioGuestDriver driver, bool function, bool masked)
    {
        if (function)
            driver.SetFunctionMask(masked);
        else
            driver.MaskQueueVector(0, masked);
    }

    static async Task<QueueStatus> QueueStatusAsync(GuestVm vm, GuestDevice device)
    {
        IActorRef queue = await vm.Host.System
            .ActorSelection(device.Remote!.Supervisor.Path / VhostUserDeviceSupervisor.ConnectionName / "queue-0")
            .ResolveOne(TimeSpan.FromSeconds(10));
        return await queue.Ask<QueueStatus>(GetQueueStatus.Instance, TimeSpan.FromSeconds(10));
    }
}
