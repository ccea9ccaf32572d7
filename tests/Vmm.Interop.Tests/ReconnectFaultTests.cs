using Akka.Actor;
using Akka.Configuration;
using Vmm.Host.Run;
using Vmm.Interop.Tests.Harness;
using Vmm.Virtio;
using Vmm.Virtio.Devices.Blk;
using Vmm.Virtio.Driver.Blk;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;

namespace Vmm.Interop.Tests;

/// <summary>
/// Fault tests: the real guest driver and transport (an in-process VM, as <c>vmm run</c> builds
/// it) on a <see cref="VhostUserDevice"/>, against back-end CHILD PROCESSES that are killed with
/// SIGKILL and restarted on the same socket and image. Writes are verified on the image file.
/// Seeds are fixed; timeouts are generous bounds, never the thing asserted.
/// </summary>
[Category("Faults")]
public sealed class ReconnectFaultTests : InteropTest
{
    const int BlockSize = 4096;
    const int Blocks = 1024;
    const int ImageMiB = Blocks * BlockSize / TestDisk.MiB;
    const int Depth = 16;
    static readonly TimeSpan CompletionTimeout = TimeSpan.FromMinutes(3);

    static readonly Config QuietAkka = ConfigurationFactory.ParseString("""
        akka.loglevel = WARNING
        akka.stdout-loglevel = OFF
        akka.log-dead-letters = off
        akka.log-dead-letters-during-shutdown = off
        """);

    [Test]
    public Task Device_must_lose_no_write_when_our_backend_is_killed_50_times_during_a_write_workload() =>
        KillDuringWrites(kills: 50, depth: Depth, backendArgs: []);

    /// <summary>
    /// The same with requests completing out of order: the back-end on O_DIRECT and io_uring keeps
    /// 32 writes at the disk, completes them as the disk finishes them, and is killed with some in
    /// flight. The inflight region resubmits those; none may be lost (every block holds the last
    /// pass) or doubled (the guest driver fails on a completion it did not expect). Split rings:
    /// the front-end resumes only those after a reconnect (a packed ring needs a reset); packed
    /// resubmission is covered at the back-end by PackedInflightBackendTests.
    /// </summary>
    [Test]
    public Task Device_must_lose_and_double_no_write_when_an_io_uring_backend_is_killed_during_depth_32_writes() =>
        KillDuringWrites(kills: 25, depth: 32, backendArgs: ["--cache", "none", "--aio", "io_uring"]);

    async Task KillDuringWrites(int kills, int depth, string[] backendArgs)
    {
        var image = TestDisk.Create(PathIn("disk.img"), ImageMiB, prefillMiB: 0);
        var socket = PathIn("blk.sock");
        var backends = new List<BackendProcess> { await BackendProcess.StartVmmBlkAsync(image, socket, extraArgs: backendArgs) };
        using var system = ActorSystem.Create("faults", QuietAkka);
        using var rig = Rig.Start(system, socket, depth: depth);
        int lost = 0, restored = 0;
        rig.Device.ConnectionLost += _ => Interlocked.Increment(ref lost);
        rig.Device.ConnectionRestored += _ => Interlocked.Increment(ref restored);
        Assert.That(rig.Device.Info.ProtocolFeatures & Vmm.VhostUser.Protocol.VhostUserProtocolFeatures.INFLIGHT_SHMFD, Is.Not.Zero,
            "our back-end offers inflight tracking");

        var killer = Task.Run(async () =>
        {
            var random = new Random(20261125);
            for (var kill = 0; kill < kills; kill++)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(random.Next(500, 2000)));
                var victim = backends[^1];
                victim.Process.Signal(9);
                await victim.Process.Exited.WaitAsync(TimeSpan.FromSeconds(30));
                File.Delete(socket);
                backends.Add(await BackendProcess.StartVmmBlkAsync(image, socket, extraArgs: backendArgs));
            }
        });

        int generation = 0;
        long writes = 0;
        try
        {
            // Whole passes over the disk, each with its own content: a write of an old pass that
            // came back after a newer one completed would leave old content behind.
            while (!killer.IsCompleted || generation < 2)
            {
                generation++;
                writes += await Task.Run(() => rig.WritePass(generation));
            }

            await killer;
        }
        finally
        {
            foreach (var b in backends)
                Own(b);
        }

        Assert.That(writes, Is.GreaterThanOrEqualTo(4 * Blocks), "several thousand 4 KiB writes");
        rig.Flush();
        TestContext.Out.WriteLine($"{writes} writes in {generation} passes at depth {depth}, {kills} kills; {lost} losses seen, {restored} restorations");
        if (backendArgs.Length > 0)
            Assert.That(backends[0].Log, Does.Contain("aio=io_uring"), "the back-end ran the engine asked for");
        AssertImageHolds(image, generation);
        Assert.That(Volatile.Read(ref restored), Is.GreaterThan(0));
    }

    [Test]
    public async Task Device_must_reconnect_to_a_restarted_qemu_storage_daemon_killed_while_idle()
    {
        var image = TestDisk.Create(PathIn("disk.img"), ImageMiB, prefillMiB: 0);
        var socket = PathIn("blk.sock");
        var qsd = Own(await BackendProcess.StartStorageDaemonAsync(image, socket));
        using var system = ActorSystem.Create("faults", QuietAkka);
        using var rig = Rig.Start(system, socket);
        Assert.That(rig.Device.Info.ProtocolFeatures & Vmm.VhostUser.Protocol.VhostUserProtocolFeatures.INFLIGHT_SHMFD, Is.EqualTo(Vmm.VhostUser.Protocol.VhostUserProtocolFeatures.None));

        for (var generation = 1; generation <= 3; generation++)
        {
            // Idle: every request completed. Then SIGKILL, a restart, and the next pass.
            rig.WritePass(generation);
            var restored = rig.NextRestoration();
            qsd.Process.Signal(9);
            await qsd.Process.Exited.WaitAsync(TimeSpan.FromSeconds(30));
            File.Delete(socket);
            qsd = Own(await BackendProcess.StartStorageDaemonAsync(image, socket));
            await restored.WaitAsync(TimeSpan.FromSeconds(60));
        }

        rig.WritePass(4);
        rig.Flush();
        AssertImageHolds(image, 4);
    }

    [Test]
    public async Task Device_must_recover_when_the_backend_comes_back_after_two_minutes()
    {
        var image = TestDisk.Create(PathIn("disk.img"), ImageMiB, prefillMiB: 0);
        var socket = PathIn("blk.sock");
        var backend = Own(await BackendProcess.StartVmmBlkAsync(image, socket));
        using var system = ActorSystem.Create("faults", QuietAkka);
        using var rig = Rig.Start(system, socket);
        rig.WritePass(1);

        var restored = rig.NextRestoration();
        backend.Process.Signal(9);
        await backend.Process.Exited.WaitAsync(TimeSpan.FromSeconds(30));

        // The guest goes on writing into a device whose back-end is gone: the requests wait.
        var pass = Task.Run(() => rig.WritePass(2));
        await Task.Delay(TimeSpan.FromMinutes(2));
        Assert.That(pass.IsCompleted, Is.False, "nothing can complete without a back-end");
        Assert.That(rig.Device.IsConnected, Is.False);

        File.Delete(socket);
        Own(await BackendProcess.StartVmmBlkAsync(image, socket));
        await restored.WaitAsync(TimeSpan.FromSeconds(60));
        await pass.WaitAsync(CompletionTimeout);
        rig.Flush();
        AssertImageHolds(image, 2);
    }

    [Test]
    public async Task Guest_must_see_DEVICE_NEEDS_RESET_when_the_device_gives_up_and_reinitialize_it_when_the_backend_is_back()
    {
        var image = TestDisk.Create(PathIn("disk.img"), ImageMiB, prefillMiB: 0);
        var socket = PathIn("blk.sock");
        var backend = Own(await BackendProcess.StartVmmBlkAsync(image, socket));
        using var system = ActorSystem.Create("faults", QuietAkka);
        using var rig = Rig.Start(system, socket, reconnect: false);
        rig.WritePass(1);
        var needsReset = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        rig.Driver.DeviceNeedsReset += () => needsReset.TrySetResult();

        backend.Process.Signal(9);
        await backend.Process.Exited.WaitAsync(TimeSpan.FromSeconds(30));
        await needsReset.Task.WaitAsync(TimeSpan.FromSeconds(60));
        Assert.That(rig.Driver.ReadStatus() & VirtioDeviceStatus.DEVICE_NEEDS_RESET, Is.Not.Zero);

        // The back-end is back; the guest resets and re-initialises the device: a fresh connection.
        File.Delete(socket);
        Own(await BackendProcess.StartVmmBlkAsync(image, socket));
        await Task.Run(rig.Reinitialize).WaitAsync(TimeSpan.FromSeconds(60));
        Assert.That(rig.Driver.ReadStatus() & VirtioDeviceStatus.DEVICE_NEEDS_RESET, Is.EqualTo((VirtioDeviceStatus)0));
        Assert.That(rig.Driver.ReadStatus() & VirtioDeviceStatus.DRIVER_OK, Is.Not.Zero);
        rig.WritePass(2);
        rig.Flush();
        AssertImageHolds(image, 2);
    }

    static void Fill(Span<byte> block, int generation, int index) =>
        VerifyPattern.Fill(block, ((ulong)generation * Blocks + (ulong)index) * BlockSize);

    static void AssertImageHolds(string path, int generation)
    {
        var actual = File.ReadAllBytes(path);
        var expected = new byte[BlockSize];
        var wrong = new List<int>();
        for (var i = 0; i < Blocks; i++)
        {
            Fill(expected, generation, i);
            if (!actual.AsSpan(i * BlockSize, BlockSize).SequenceEqual(expected))
                wrong.Add(i);
        }
        Assert.That(wrong, Is.Empty, $"blocks not holding pass {generation}'s content (first: {string.Join(", ", wrong.Take(10))})");
    }

    /// <summary>The VM <c>vmm run</c> builds, with one vhost-user blk device and a write workload on queue 0.</summary>
    sealed class Rig : IDisposable
    {
        readonly GuestVm _vm;
        readonly VhostUserDeviceSource _source;
        readonly ulong[] _buffers;
        readonly int _depth;
        BlkGuest _blk;

        Rig(GuestVm vm, VhostUserDeviceSource source, int depth)
        {
            _vm = vm;
            _source = source;
            _depth = depth;
            _blk = new BlkGuest(vm.Devices[0], vm.Memory, vm.Allocator);
            _buffers = [.. Enumerable.Range(0, depth).Select(_ => vm.Allocator.Allocate(BlockSize, BlockSize))];
        }

        public VhostUserDevice Device => _source.Device!;

        public Vmm.Virtio.Driver.VirtioGuestDriver Driver => _vm.Devices[0].Driver;

        public static Rig Start(ActorSystem system, string socket, bool reconnect = true, int depth = Depth)
        {
            var options = new VhostUserDeviceOptions(socket, VirtioDeviceId.Block)
            {
                Reconnect = reconnect,
                CommandTimeout = TimeSpan.FromSeconds(60),
            };
            var source = new VhostUserDeviceSource(system, options);
            var vm = GuestVm.Start(new RunOptions { Devices = [source], MemorySize = 64UL << 20 });
            return new Rig(vm, source, depth);
        }

        public Task NextRestoration()
        {
            var restored = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            Action<int>? handler = null;
            handler = _ =>
            {
                Device.ConnectionRestored -= handler;
                restored.TrySetResult();
            };
            Device.ConnectionRestored += handler;
            return restored.Task;
        }

        /// <summary>Writes every block once with <paramref name="generation"/>'s content, the rig's depth at a time; returns when all completed.</summary>
        public int WritePass(int generation)
        {
            BlkQueue queue = _blk.Queues[0];
            var free = new Stack<int>(Enumerable.Range(0, _depth));
            var block = new byte[BlockSize];
            int next = 0, done = 0;
            while (done < Blocks)
            {
                bool submitted = false;
                while (next < Blocks && free.Count > 0)
                {
                    int slot = free.Pop();
                    Fill(block, generation, next);
                    _vm.Memory.Write(_buffers[slot], block);
                    VirtioBlkRequest? request = queue.TrySubmitWrite((ulong)next * (BlockSize / VirtioBlk.SectorSize), _buffers[slot], BlockSize, slot);
                    if (request is null)
                    {
                        free.Push(slot);
                        break;
                    }

                    next++;
                    submitted = true;
                }

                if (submitted)
                    queue.Kick();

                VirtioBlkRequest completed = queue.Complete(CompletionTimeout);
                if (!completed.Succeeded)
                    throw new AssertionException($"A write of pass {generation} to sector {completed.Sector} failed with status {completed.Status}.");
                free.Push((int)completed.State!);
                done++;
            }

            return Blocks;
        }

        public void Flush()
        {
            BlkQueue queue = _blk.Queues[0];
            Assert.That(queue.TrySubmitFlush(), Is.Not.Null);
            queue.Kick();
            Assert.That(queue.Complete(CompletionTimeout).Succeeded, Is.True, "flush");
        }

        public void Reinitialize()
        {
            Driver.ResetAndReinitialize();
            _blk = new BlkGuest(_vm.Devices[0], _vm.Memory, _vm.Allocator);
        }

        public void Dispose() => _vm.Dispose();
    }

    /// <summary>A <c>--vhost-user</c> device for <see cref="GuestVm"/>: connects when the VM is built.</summary>
    sealed class VhostUserDeviceSource(ActorSystem system, VhostUserDeviceOptions options) : IDeviceSource
    {
        public string Kind => "blk";

        public VirtioDeviceId DeviceId => VirtioDeviceId.Block;

        public VhostUserDevice? Device { get; private set; }

        public IVirtioDevice Create() => Device = VhostUserDevice.ConnectAsync(system, options).GetAwaiter().GetResult();
    }
}
