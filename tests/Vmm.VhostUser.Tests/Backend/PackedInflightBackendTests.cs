using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Core.Posix;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Driver.Blk;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Inflight;
using Vmm.VhostUser.Protocol;
using static Vmm.VhostUser.Tests.Backend.ScriptedFrontend;

namespace Vmm.VhostUser.Tests.Backend;

/// <summary>Our back-end resubmitting packed-ring requests from an inflight region after a reconnect.</summary>
[TestFixture]
public sealed class PackedInflightBackendTests
{
    private const ushort QueueSize = 32;
    private const ulong Packed = VirtioFeatures.VERSION_1 | VhostUserVirtioFeatures.PROTOCOL_FEATURES | VirtioFeatures.RING_PACKED;

    [Test]
    public async Task Requests_a_dead_backend_took_are_completed_by_the_next_one_from_the_region()
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        await frontend.HandshakeAsync();
        byte[] request = new byte[VhostUserInflight.Size];
        new VhostUserInflight(0, 0, 1, QueueSize).Write(request);
        await frontend.SendAsync(VhostUserRequest.GET_INFLIGHT_FD, request);
        SafeFileDescriptor regionFd;
        VhostUserInflight shape;
        using (VhostUserMessage reply = await frontend.ReceiveAsync())
        {
            shape = VhostUserInflight.Read(reply.Payload.Span);
            regionFd = reply.TakeFd(0);
        }

        using (regionFd)
        {
            // The guest makes three reads available; a back-end takes them all, records them in
            // the region, completes only the second (its used descriptor overwrites the first
            // request's ring slot) and dies.
            var queue = new BlkQueue(frontend, DriverQueue.Create(frontend.Memory, frontend.Allocator, QueueSize, Packed & ~VhostUserVirtioFeatures.PROTOCOL_FEATURES));
            using (queue)
            {
                var buffers = new ulong[3];
                var requests = new VirtioBlkRequest[3];
                for (int i = 0; i < 3; i++)
                {
                    buffers[i] = frontend.Allocator.Allocate(512, 512);
                    requests[i] = queue.Requests.TrySubmitRead((ulong)(10 + i), [new DriverBuffer(buffers[i], 512, true)])!;
                }

                var dup = new SafeFileDescriptor(Mono.Unix.Native.Syscall.dup((int)regionFd.DangerousGetHandle()));
                using (InflightRegion dead = InflightRegion.Open(dup, shape.MmapSize, shape.MmapOffset, shape.NumQueues, shape.QueueSize, Vmm.Core.Memory.UnsealedMemoryPolicy.Refuse, () => { }))
                {
                    PackedInflightQueue tracker = dead.PackedQueue(0);
                    tracker.Recover(frontend.Memory, queue.Driver.Params.DescriptorArea, new VirtqueueState(0, 0, true, true));
                    using var kick = new EventFd();
                    var resources = new VirtqueueResources(queue.Driver.Params, frontend.Memory, kick, new FunctionBackedInterruptLine(0, _ => { }));
                    var died = new PackedDeviceQueue(resources, Packed, null, tracker);
                    var taken = new List<DescriptorChain>();
                    while (died.TryPop(out DescriptorChain chain))
                    {
                        taken.Add(chain);
                    }

                    Assert.That(taken, Has.Count.EqualTo(3));
                    VirtioBlkRequestsTestAccess.CompleteAsDevice(frontend.Memory, taken[1], backend.OriginalImage.AsSpan(11 * 512, 512));
                    died.Complete(taken[1], 513);
                    Assert.That(tracker.CountInflight(), Is.EqualTo(2));
                }

                // The front-end hands the region to the back-end and starts the ring again from
                // the position it last knew (0): the ring's first slot is no longer available, so
                // only the region can bring the first and third requests back.
                Assert.That(await frontend.SetMemTableAsync(), Is.Zero);
                Assert.That(await frontend.AckAsync(VhostUserRequest.SET_FEATURES, U64(Packed)), Is.Zero);
                Assert.That(await frontend.AckAsync(VhostUserRequest.SET_INFLIGHT_FD, Payload(shape), [regionFd]), Is.Zero);
                await frontend.StartQueueAsync(0, QueueSize, Packed, reuse: queue);

                for (int i = 0; i < 3; i++)
                {
                    Assert.That(queue.Complete(requests[i]), Is.Zero, $"request {i} completed by the new back-end");
                    byte[] got = new byte[512];
                    frontend.Memory.Read(buffers[i], got);
                    Assert.That(got, Is.EqualTo(backend.OriginalImage.AsSpan((10 + i) * 512, 512).ToArray()));
                }

                // And the ring goes on after them.
                byte[] next = new byte[512];
                Assert.That(queue.Read(20, next), Is.Zero);
                Assert.That(next, Is.EqualTo(backend.OriginalImage.AsSpan(20 * 512, 512).ToArray()));
            }
        }
    }

    private static byte[] Payload(VhostUserInflight shape)
    {
        byte[] payload = new byte[VhostUserInflight.Size];
        shape.Write(payload);
        return payload;
    }

    /// <summary>What a virtio-blk device does for a read chain: data into the buffer, status OK.</summary>
    private static class VirtioBlkRequestsTestAccess
    {
        public static void CompleteAsDevice(Vmm.Core.Memory.GuestMemory memory, DescriptorChain chain, ReadOnlySpan<byte> data)
        {
            // Segments: header (device-readable), data (writable), status byte (writable).
            DescriptorSegment buffer = chain.Segments[1];
            DescriptorSegment status = chain.Segments[^1];
            memory.Write(buffer.Address, data[..(int)buffer.Length]);
            memory.Write(status.Address, [0]);
        }
    }
}
