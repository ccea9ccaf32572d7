using Microsoft.Extensions.Logging.Abstractions;
using NUnit.Framework;
using Vmm.Host.Cli;
using Vmm.Host.Run;
using Vmm.Virtio;
using Vmm.Virtio.Devices.Blk;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Backend;

namespace Vmm.Host.Tests.Run;

/// <summary>
/// A vhost-user device that gives up during a workload (DEVICE_NEEDS_RESET): <c>vmm run</c>'s
/// guest resets and re-initialises it and the workload starts again; a second give-up ends the
/// workload with one sentence. Neither waits for a request timeout.
/// </summary>
[TestFixture]
public sealed class NeedsResetTests
{
    private const int ImageBytes = 16 << 20;

    [Test]
    public async Task The_workload_starts_again_after_the_device_gave_up_and_the_guest_reset_it()
    {
        using var image = new TempImage(ImageBytes, seed: 31);
        string dir = Directory.CreateTempSubdirectory("vmm-reset-").FullName;
        string socket = Path.Combine(dir, "blk.sock");
        using var device = new VirtioBlkDevice(new VirtioBlkOptions(image.Path));
        Served first = Served.Start(device, socket);
        using GuestVm vm = GuestVm.Start(Options(socket, reconnect: true));
        var messages = new StringWriter();
        vm.Messages = messages;
        GuestDevice blk = vm.Devices[0];
        Assert.That(blk.Driver.NegotiatedFeatures & VirtioFeatures.RING_EVENT_IDX, Is.Not.Zero);
        using var paused = new Pause();
        Task<string> run = Task.Run(() => vm.RunWithResets(blk, "verify", g => paused.FirstTime(vm, g)));
        await paused.Reached.WaitAsync(TimeSpan.FromMinutes(1));

        // The back-end is replaced by one that no longer offers EVENT_IDX: the device cannot resume
        // what the guest negotiated and gives up; the guest's reset negotiates afresh with it (the
        // device offers the new back-end's features, not the first one's).
        await first.StopAsync();
        using var masked = new WithoutFeature(device, VirtioFeatures.RING_EVENT_IDX);
        Served second = Served.Start(masked, socket);
        paused.Release();
        try
        {
            string result = await run.WaitAsync(TimeSpan.FromMinutes(3));
            Assert.That(result, Does.StartWith("verify:").And.EndWith("equal"));
            Assert.That(paused.Attempts, Is.EqualTo(2));
            Assert.That(messages.ToString(), Does.Contain("no longer offers").And.Contain("EVENT_IDX").And.Contain("resetting and re-initialising it, then starting verify again"));
            Assert.That(blk.Driver.NegotiatedFeatures & VirtioFeatures.RING_EVENT_IDX, Is.Zero, "negotiated afresh");
        }
        finally
        {
            await second.StopAsync();
            Directory.Delete(dir, recursive: true);
        }
    }

    [Test]
    public async Task A_second_give_up_ends_the_workload_with_one_sentence()
    {
        using var image = new TempImage(ImageBytes, seed: 32);
        string dir = Directory.CreateTempSubdirectory("vmm-reset-").FullName;
        string socket = Path.Combine(dir, "blk.sock");
        using var device = new VirtioBlkDevice(new VirtioBlkOptions(image.Path));
        Served served = Served.Start(device, socket);
        try
        {
            using GuestVm vm = GuestVm.Start(Options(socket, reconnect: false));
            vm.Messages = new StringWriter();
            GuestDevice blk = vm.Devices[0];
            using var paused = new Pause();
            Task<string> run = Task.Run(() => vm.RunWithResets(blk, "verify", g => paused.FirstTime(vm, g)));
            await paused.Reached.WaitAsync(TimeSpan.FromMinutes(1));
            await served.StopAsync();
            paused.Release();

            WorkloadFailedException? e = await Assert.ThrowsAsync<WorkloadFailedException>(() => run.WaitAsync(TimeSpan.FromMinutes(3)));
            Assert.That(e!.Message, Does.Contain($"blk0 ({socket})").And.Contain("reset"));
            Assert.That(e.Message, Does.Not.Contain("within 30 s").And.Not.Contain("\n"), "one sentence, not the request timeout");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>
    /// A workload whose first run writes one block, then waits for the test (which replaces or
    /// stops the back-end) before it writes again; later runs are the verify itself.
    /// </summary>
    private sealed class Pause : IDisposable
    {
        private readonly TaskCompletionSource _reached = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly ManualResetEventSlim _release = new();
        private int _attempts;

        public Task Reached => _reached.Task;

        public int Attempts => Volatile.Read(ref _attempts);

        public void Release() => _release.Set();

        public string FirstTime(GuestVm vm, GuestDevice device)
        {
            var blk = new BlkGuest(device, vm.Memory, vm.Allocator);
            if (Interlocked.Increment(ref _attempts) > 1)
            {
                return Workloads.VerifyBlk(vm, blk);
            }

            BlkQueue queue = blk.Queues[0];
            ulong buffer = vm.Allocator.Allocate(4096, 4096);
            WriteOne(queue, buffer);
            _reached.SetResult();
            _release.Wait();
            WriteOne(queue, buffer);
            throw new InvalidOperationException("The second write completed: the device did not give up.");
        }

        public void Dispose() => _release.Dispose();

        private static void WriteOne(BlkQueue queue, ulong buffer)
        {
            _ = queue.TrySubmitWrite(0, buffer, 4096) ?? throw new InvalidOperationException("No room for one write.");
            queue.Kick();
            queue.Complete(Workloads.RequestTimeout);
        }
    }

    private static RunOptions Options(string socket, bool reconnect) => new()
    {
        Devices = [new VhostUserDeviceSource(new VhostUserSpec(socket, VirtioDeviceId.Block, null, 256, reconnect, null), "blk0")],
        MemorySize = 64UL << 20,
        Workload = RunWorkload.Verify,
        BlockSize = 4096,
        IoDepth = 1,
    };

    /// <summary>A back-end of ours in this process on <c>socket</c>.</summary>
    private sealed class Served
    {
        private readonly VhostUserBackendServer _server;
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _run;

        private Served(IVirtioDevice device, string socket)
        {
            _server = VhostUserBackendServer.Bind(device, socket, NullLogger.Instance);
            _run = _server.RunAsync(_stop.Token);
        }

        public static Served Start(IVirtioDevice device, string socket) => new(device, socket);

        public async Task StopAsync()
        {
            await _stop.CancelAsync();
            _server.Dispose();
            try
            {
                await _run.WaitAsync(TimeSpan.FromSeconds(10));
            }
            catch (OperationCanceledException)
            {
            }
        }
    }

    /// <summary>The same device without one feature bit: a back-end that no longer offers it.</summary>
    private sealed class WithoutFeature(IVirtioDevice inner, ulong feature) : IVirtioDevice
    {
        public event Action? ConfigChanged
        {
            add => inner.ConfigChanged += value;
            remove => inner.ConfigChanged -= value;
        }

        public event Action<DeviceFault>? Faulted
        {
            add => inner.Faulted += value;
            remove => inner.Faulted -= value;
        }

        public VirtioDeviceId DeviceId => inner.DeviceId;

        public ulong DeviceFeatures => inner.DeviceFeatures & ~feature;

        public int QueueCount => inner.QueueCount;

        public int ConfigSize => inner.ConfigSize;

        public ushort GetMaxQueueSize(int index) => inner.GetMaxQueueSize(index);

        public void ReadConfig(uint offset, Span<byte> data) => inner.ReadConfig(offset, data);

        public void WriteConfig(uint offset, ReadOnlySpan<byte> data) => inner.WriteConfig(offset, data);

        public void StartQueue(int index, VirtqueueResources resources, ulong features, VirtqueueState? initialState = null) =>
            inner.StartQueue(index, resources, features, initialState);

        public VirtqueueState? StopQueue(int index) => inner.StopQueue(index);

        public void Reset() => inner.Reset();

        public byte[] SaveState() => inner.SaveState();

        public void RestoreState(ReadOnlySpan<byte> state) => inner.RestoreState(state);

        public void Dispose()
        {
        }
    }
}
