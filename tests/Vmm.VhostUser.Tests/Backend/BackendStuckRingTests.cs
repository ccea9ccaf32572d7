using Microsoft.Extensions.Logging.Abstractions;
using Vmm.Core.Memory;
using Vmm.Virtio;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Backend;
using Vmm.VhostUser.Protocol;
using static Vmm.VhostUser.Tests.Backend.ScriptedFrontend;

namespace Vmm.VhostUser.Tests.Backend;

/// <summary>A device whose handler never returns: the back-end must neither hang nor unmap memory under it.</summary>
[TestFixture]
[Category("Backend")]
public sealed class BackendStuckRingTests
{
    private const ulong Base = VirtioFeatures.VERSION_1 | VhostUserVirtioFeatures.PROTOCOL_FEATURES;

    [Test]
    public async Task A_ring_stuck_in_the_device_ends_the_session_and_its_memory_stays_mapped_for_the_worker()
    {
        string directory = Directory.CreateTempSubdirectory("vmm-stuck-").FullName;
        using var device = new StuckDevice();
        var server = VhostUserBackendServer.Bind(device, Path.Combine(directory, "stuck.sock"), NullLogger.Instance);
        using var stop = new CancellationTokenSource();
        Task serving = Task.Run(() => server.RunAsync(stop.Token));
        try
        {
            using (ScriptedFrontend frontend = await ConnectAsync(server.SocketPath))
            {
                BlkQueue queue = await frontend.StartDeviceAsync(64, Base);
                queue.SubmitWrite(0, frontend.Allocator.Allocate(512, 512), 512);
                queue.KickDevice();
                Assert.That(device.Entered.Wait(TimeSpan.FromSeconds(30)), Is.True, "the worker took the request");

                // GET_VRING_BASE must stop the ring: the worker does not stop within its limit, so
                // the back-end gives up on the session instead of waiting for ever.
                await frontend.SendAsync(VhostUserRequest.GET_VRING_BASE, State(0, 0));
                await frontend.ExpectDisconnectAsync(VirtqueueWorker.StopTimeout + TimeSpan.FromSeconds(30));
            }

            // The worker, still inside the handler, writes into guest memory of a session that is
            // over: that memory must still be mapped (else this process would die of SIGSEGV).
            device.Release.Set();
            Assert.That(device.Returned.Wait(TimeSpan.FromSeconds(30)), Is.True, "the handler returned");
            Assert.That(device.Wrote, Is.True);

            // And the server still serves.
            using ScriptedFrontend next = await ConnectAsync(server.SocketPath);
            Assert.That(await next.GetU64Async(VhostUserRequest.GET_FEATURES), Is.Not.Zero);
        }
        finally
        {
            device.Release.Set();
            await stop.CancelAsync();
            await serving.WaitAsync(TimeSpan.FromSeconds(60));
            server.Dispose();
            Directory.Delete(directory, recursive: true);
        }
    }

    /// <summary>One queue whose handler blocks until released, then writes into the chain's buffer.</summary>
    private sealed class StuckDevice() : VirtioDeviceBase(VirtioDeviceId.Entropy, SupportedRingFeatures, 1, 256)
    {
        public ManualResetEventSlim Entered { get; } = new();

        public ManualResetEventSlim Release { get; } = new();

        public ManualResetEventSlim Returned { get; } = new();

        public bool Wrote { get; private set; }

        public override int ConfigSize => 0;

        public override void ReadConfig(uint offset, Span<byte> data) => data.Clear();

        public override void WriteConfig(uint offset, ReadOnlySpan<byte> data)
        {
        }

        protected override uint ProcessRequest(int queueIndex, DescriptorChain chain, GuestMemory memory)
        {
            Entered.Set();
            Release.Wait();
            DescriptorSegment last = chain.Segments[^1];
            memory.WriteByte(last.Address, 0);
            Wrote = true;
            Returned.Set();
            return 1;
        }

        protected override void Dispose(bool disposing)
        {
            Release.Set();
            base.Dispose(disposing);
        }
    }
}
