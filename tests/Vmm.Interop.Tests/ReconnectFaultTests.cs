using Vmm.Host.Run;
using Vmm.Interop.Tests.Harness;
using Vmm.Virtio;
using Vmm.Virtio.Devices.Blk;
using Vmm.Virtio.Driver.Blk;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;

namespace Vmm.Interop.Tests;

/// <summary>
/// Fault tests: the real guest driver and transport (an in-process VM, built as <c>vmm run</c>
/// builds it: the VM actor tree through Akka.Hosting) on a vhost-user device, against back-end CHILD PROCESSES that are killed with
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
        var backends = new List<BackendProcess> { await BackendProcess.StartVmmBlkAsync(image, socket, extra: backendArgs) };
        using var rig = Rig.Start(socket, depth: depth);
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
                backends.Add(await BackendProcess.StartVmmBlkAsync(image, socket, extra: backendArgs));
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
        using var rig = Rig.Start(socket);
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

    /// <summary>
    /// qemu-storage-daemon killed 20 times while queue 0 writes pass after pass; before each kill
    /// the daemon is frozen (SIGSTOP) and the guest makes a write available on queue 1 and kicks
    /// it, so every replay meets a kick the dead daemon never read. The daemon processes such a
    /// ring as soon as it has its kick fd: the replay must have given it the call fd before
    /// (qemu-storage-daemon 7.2 otherwise logs "vu_panic: Error writing eventfd" and drops the
    /// connection). Writes on queue 0 go one at a time: qemu-storage-daemon has no inflight
    /// tracking, and one request at a time cannot complete out of order (docs/reconnect.md).
    /// </summary>
    [Test]
    public async Task Device_must_reconnect_to_qemu_storage_daemon_killed_20_times_with_kicks_pending_and_no_flap()
    {
        const int Kills = 20;
        var image = TestDisk.Create(PathIn("disk.img"), ImageMiB + 1, prefillMiB: 0);
        var socket = PathIn("blk.sock");
        var daemons = new List<BackendProcess> { await BackendProcess.StartStorageDaemonAsync(image, socket, queues: 2) };
        try
        {
            using var rig = Rig.Start(socket);
            Assert.That(rig.QueueCount, Is.EqualTo(2));
            int restored = 0;
            rig.Device.ConnectionRestored += _ => Interlocked.Increment(ref restored);

            var killer = Task.Run(async () =>
            {
                var random = new Random(20261202);
                for (var kill = 0; kill < Kills; kill++)
                {
                    await Task.Delay(TimeSpan.FromMilliseconds(random.Next(200, 800)));
                    var victim = daemons[^1];
                    victim.Process.Signal(19); // SIGSTOP: it reads nothing more
                    var pending = Task.Run(() => rig.WriteExtraBlock(kill));
                    await Task.Delay(50);
                    victim.Process.Signal(9);
                    await victim.Process.Exited.WaitAsync(TimeSpan.FromSeconds(30));
                    File.Delete(socket);
                    daemons.Add(await BackendProcess.StartStorageDaemonAsync(image, socket, queues: 2));
                    await pending.WaitAsync(CompletionTimeout);
                }
            });

            int generation = 0;
            while (!killer.IsCompleted || generation < 2)
            {
                generation++;
                await Task.Run(() => rig.WritePass(generation, depth: 1));
            }

            await killer;
            rig.Flush();
            AssertImageHolds(image, generation);
            rig.AssertExtraBlocks(image, Kills);
            Assert.That(Volatile.Read(ref restored), Is.GreaterThanOrEqualTo(Kills));
            foreach (var daemon in daemons)
            {
                Assert.That(daemon.Log, Does.Not.Contain("vu_panic"), daemon.Describe());
            }
        }
        finally
        {
            foreach (var daemon in daemons)
                Own(daemon);
        }
    }

    [Test]
    public async Task Device_must_recover_when_the_backend_comes_back_after_two_minutes()
    {
        var image = TestDisk.Create(PathIn("disk.img"), ImageMiB, prefillMiB: 0);
        var socket = PathIn("blk.sock");
        var backend = Own(await BackendProcess.StartVmmBlkAsync(image, socket));
        using var rig = Rig.Start(socket);
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
        using var rig = Rig.Start(socket, reconnect: false);
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
        readonly ulong[] _buffers;
        readonly ulong _extra;
        readonly int _depth;
        BlkGuest _blk;

        Rig(GuestVm vm, int depth)
        {
            _vm = vm;
            _depth = depth;
            _blk = new BlkGuest(vm.Devices[0], vm.Memory, vm.Allocator);
            _buffers = [.. Enumerable.Range(0, depth).Select(_ => vm.Allocator.Allocate(BlockSize, BlockSize))];
            _extra = vm.Allocator.Allocate(BlockSize, BlockSize);
        }

        public IVhostUserDevice Device => _vm.Devices[0].Remote!;

        public Vmm.Virtio.Driver.VirtioGuestDriver Driver => _vm.Devices[0].Driver;

        public static Rig Start(string socket, bool reconnect = true, int depth = Depth)
        {
            var options = new VhostUserDeviceOptions(socket, VirtioDeviceId.Block)
            {
                Name = "blk0",
                Reconnect = reconnect,
                CommandTimeout = TimeSpan.FromSeconds(60),
            };
            var source = new HostedBlkSource(options);
            var vm = GuestVm.Start(new RunOptions { Devices = [source], MemorySize = 64UL << 20 });
            return new Rig(vm, depth);
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

        public int QueueCount => _blk.Queues.Count;

        /// <summary>Writes every block once with <paramref name="generation"/>'s content, <paramref name="depth"/> (else the rig's depth) at a time; returns when all completed.</summary>
        public int WritePass(int generation, int? depth = null)
        {
            BlkQueue queue = _blk.Queues[0];
            var free = new Stack<int>(Enumerable.Range(0, depth ?? _depth));
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

        /// <summary>
        /// On queue 1: makes a write of block <paramref name="n"/> past the main area available and
        /// kicks, then waits for it (it completes once a back-end serves the ring again).
        /// </summary>
        public void WriteExtraBlock(int n)
        {
            BlkQueue queue = _blk.Queues[1];
            var block = new byte[BlockSize];
            Fill(block, 1000, n);
            _vm.Memory.Write(_extra, block);
            _ = queue.TrySubmitWrite((ulong)(Blocks + n) * (BlockSize / VirtioBlk.SectorSize), _extra, BlockSize)
                ?? throw new AssertionException("Queue 1 has no room for one write.");
            queue.Kick();
            VirtioBlkRequest done = queue.Complete(CompletionTimeout);
            if (!done.Succeeded)
                throw new AssertionException($"The extra write {n} failed with status {done.Status}.");
        }

        public void AssertExtraBlocks(string path, int count)
        {
            var actual = File.ReadAllBytes(path);
            var expected = new byte[BlockSize];
            for (var n = 0; n < count; n++)
            {
                Fill(expected, 1000, n);
                Assert.That(actual.AsSpan((Blocks + n) * BlockSize, BlockSize).SequenceEqual(expected), Is.True, $"extra block {n}");
            }
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
            _vm.Reinitialize(_vm.Devices[0]);
            _blk = new BlkGuest(_vm.Devices[0], _vm.Memory, _vm.Allocator);
        }

        public void Dispose() => _vm.Dispose();
    }
}
