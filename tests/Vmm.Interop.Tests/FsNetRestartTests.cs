using System.Text;
using Vmm.Host.Cli;
using Vmm.Host.Run;
using Vmm.Interop.Tests.Harness;
using Vmm.Virtio.Driver.Fs;
using Vmm.Virtio.Driver.Net;
using Vmm.Virtio.Machine;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;

namespace Vmm.Interop.Tests;

/// <summary>
/// The fs and net guest drivers when their back-end dies and a new process comes up on the same
/// socket (docs/reconnect.md): the VM as <c>vmm run</c> builds it, the back-ends as child
/// processes killed with SIGKILL. Timeouts are generous bounds, never the thing asserted.
/// </summary>
[Category("Faults")]
public sealed class FsNetRestartTests : InteropTest
{
    static readonly TimeSpan Bound = TimeSpan.FromMinutes(2);

    // requestInFlight: the next request is put on the ring before the device has noticed the loss
    // (it stays there and the successor finds it). The C virtiofsd's libvhost-user starts a ring
    // at SET_VRING_KICK and completes what it finds there at once, so it needs the call fd
    // first: the bring-up sends SET_VRING_CALL before SET_VRING_KICK (docs/reconnect.md).
    [TestCase(VirtiofsdKind.C, false)]
    [TestCase(VirtiofsdKind.C, true)]
    [TestCase(VirtiofsdKind.Rust, false)]
    [TestCase(VirtiofsdKind.Rust, true)]
    public async Task Fs_session_must_end_with_a_clear_error_when_virtiofsd_dies_and_a_new_session_must_work_on_its_successor(VirtiofsdKind kind, bool requestInFlight)
    {
        var shared = SharedTree.Create(PathIn("shared"));
        var socket = PathIn("fs.sock");
        var first = await StartVirtiofsdAsync(kind, shared, socket);
        using var vm = StartVm(socket, "fs");
        var device = (VhostUserDevice)vm.Devices[0].Device;
        var options = new VirtioFsSessionOptions { RequestTimeout = Bound };
        var fs = new FsGuest(vm.Devices[0], vm.Memory, vm.Allocator, options);
        fs.Start();
        FuseEntry? file = fs.Session.Lookup(Fuse.RootId, "a.txt"u8);
        Assert.That(file, Is.Not.Null);
        Task restored = NextRestoration(device);
        var noticed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        device.ConnectionLost += _ => noticed.TrySetResult();

        first.Process.Signal(Posix.SigKill);
        Assert.That(await first.Process.WaitForExitAsync(Bound), Is.True);
        if (!requestInFlight)
            await noticed.Task.WaitAsync(Bound);

        // The next request ends with the reason, not a hang: the device saw its back-end go.
        var lost = await Task.Run(() => Assert.Throws<FuseSessionLostException>(() => fs.Session.GetAttr(file!.Value.NodeId)));
        Assert.That(lost!.Message, Does.Contain("went away").And.Contain("does not survive a back-end restart"));
        Assert.Throws<FuseSessionLostException>(() => fs.Session.StatFs(), "a lost session stays lost");
        fs.Dispose();

        // A new virtiofsd on the same socket: the device reconnects; a new FUSE session (INIT,
        // lookups from the root) works on it, as a remount would.
        File.Delete(socket);
        await StartVirtiofsdAsync(kind, shared, socket);
        await restored.WaitAsync(Bound);
        using var again = new FsGuest(vm.Devices[0], vm.Memory, vm.Allocator, options);
        again.Start();
        FuseEntry entry = again.Session.Lookup(Fuse.RootId, "a.txt"u8) ?? throw new AssertionException("a.txt is not found by the new session");
        FuseHandle handle = again.Session.Open(entry.NodeId, Fuse.O_RDONLY);
        var data = new byte[64];
        int read = again.Session.Read(handle, 0, data);
        again.Session.Release(handle, Fuse.O_RDONLY);
        Assert.That(data.AsSpan(0, read).ToArray(), Is.EqualTo(await File.ReadAllBytesAsync(Path.Combine(shared, "a.txt"))));
    }

    [Test]
    public async Task Net_driver_must_echo_again_after_testpmd_is_killed_and_restarted()
    {
        var socket = PathIn("net.sock");
        var first = await StartTestpmdAsync(socket);
        using var vm = StartVm(socket, "net");
        var device = (VhostUserDevice)vm.Devices[0].Device;
        using var net = new VirtioNetDriver(vm.Devices[0].Driver, vm.Memory, vm.Allocator);
        var log = new StringWriter();
        NetEchoResult before = NetWorkloads.Echo(net, 2000, new StringWriter(), log);
        Assert.That(before.Clean, Is.True);
        Task restored = NextRestoration(device);

        first.Process.Signal(Posix.SigKill);
        Assert.That(await first.Process.WaitForExitAsync(Bound), Is.True);
        File.Delete(socket); // a killed testpmd leaves its socket behind
        await StartTestpmdAsync(socket);
        await restored.WaitAsync(Bound);

        // The receive buffers posted before the crash are still in the ring the new back-end resumed.
        var output = new StringWriter();
        NetEchoResult after = NetWorkloads.Echo(net, 2000, output, log);
        Assert.That(output.ToString(), Does.StartWith("net: sent 2000, received 2000, bad 0"));
        Assert.That(after.Clean, Is.True, log.ToString());
    }

    static GuestVm StartVm(string socket, string type) => GuestVm.Start(new RunOptions
    {
        Devices = [new VhostUserDeviceSource(VhostUserSpec.Parse($"{socket},type={type}"), $"{type}0")],
        MemorySize = 128UL << 20,
        Delivery = GuestInterruptDelivery.EventBacked,
    });

    static Task NextRestoration(VhostUserDevice device)
    {
        var restored = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        device.ConnectionRestored += _ => restored.TrySetResult();
        return restored.Task;
    }
}
