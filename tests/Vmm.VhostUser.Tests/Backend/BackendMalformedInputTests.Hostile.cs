using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Mono.Unix.Native;
using Vmm.Core.Events;
using Vmm.Core.Memory;
using Vmm.Core.Posix;
using Vmm.Core.Posix.Sockets;
using Vmm.TestKit;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Backend;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Inflight;
using Vmm.VhostUser.Protocol;
using Vmm.VhostUser.Tests.Channel;
using static Vmm.VhostUser.Tests.Backend.ScriptedFrontend;

namespace Vmm.VhostUser.Tests.Backend;

/// <summary>
/// A front-end that means harm rather than one that is merely wrong: notifier fds that are not
/// eventfds or that it saturated, inflight regions swapped under running rings, shared memory
/// truncated under them, device-state transfers that never end, silence.
/// </summary>
public sealed partial class BackendMalformedInputTests
{
    private const ulong Indirect = VirtioFeatures.RING_INDIRECT_DESC;
    private const ushort QueueSize = 64;
    private const int EPERM = 1;

    /// <summary>0xfffffffffffffffe: an eventfd counter at its maximum, where a blocking write of 1 would wait (eventfd(2)).</summary>
    private const ulong SaturatedCounter = 0xffff_ffff_ffff_fffe;

    /// <summary>Limits short enough for the cases that wait them out, long enough for a loaded machine to send a message.</summary>
    private static readonly VhostUserBackendOptions s_quickLimits = new()
    {
        FirstMessageTimeout = TimeSpan.FromSeconds(2),
        MessageTimeout = TimeSpan.FromSeconds(2),
        DeviceStateTimeout = TimeSpan.FromMilliseconds(500),
    };

    /// <summary>A deadline no case waits out: a transfer thread that ends did so because it was cancelled.</summary>
    private static readonly VhostUserBackendOptions s_longTransfers = new() { DeviceStateTimeout = TimeSpan.FromSeconds(60) };

    private static readonly Case[] s_hostileCases =
    [
        // Notifier fds that are not eventfds are refused at the request that brings them.
        new("err fd on a pipe's read end", Outcome.Nack, f => Handshaken(f, () => WithPipe((read, _) => f.SendAsync(VhostUserRequest.SET_VRING_ERR, U64(0), [read], true)))),
        new("err fd on dev full", Outcome.Nack, f => Handshaken(f, () => WithFile("/dev/full", fd => f.SendAsync(VhostUserRequest.SET_VRING_ERR, U64(0), [fd], true)))),
        new("call fd on a pipe's write end that is never read", Outcome.Nack, f => Handshaken(f, () => WithPipe((_, write) => f.SendAsync(VhostUserRequest.SET_VRING_CALL, U64(0), [write], true)))),
        new("call fd on a socket", Outcome.Nack, f => Handshaken(f, () => WithSocket(fd => f.SendAsync(VhostUserRequest.SET_VRING_CALL, U64(0), [fd], true)))),
        new("kick fd on a memfd", Outcome.Nack, f => Handshaken(f, () => WithMemFd(f, fd => f.SendAsync(VhostUserRequest.SET_VRING_KICK, U64(0), [fd], true)))),
        new("kick fd on dev null", Outcome.Nack, f => Handshaken(f, () => WithFile("/dev/null", fd => f.SendAsync(VhostUserRequest.SET_VRING_KICK, U64(0), [fd], true)))),
        new("err fd on the socket itself", Outcome.Nack, f => Handshaken(f, () => f.SendAsync(VhostUserRequest.SET_VRING_ERR, U64(0), [f.Channel.Socket.SafeHandle], true))),

        // Eventfds the front-end saturated: the signal is dropped, nothing blocks.
        new("call eventfd saturated", Outcome.Served, SaturatedCallAsync),
        new("kick eventfd saturated", Outcome.Served, SaturatedKickAsync),
        new("err eventfd saturated when the ring faults", Outcome.Served, f => FaultWithErrorFdAsync(f, saturated: true)),
        new("ring fault signals the err eventfd", Outcome.Served, f => FaultWithErrorFdAsync(f, saturated: false)),
        new("indirect table beyond the fixed bound", Outcome.Served, IndirectBeyondTheBoundAsync),

        // Inflight regions under running rings: refused, never unmapped under a worker.
        new("second GET_INFLIGHT_FD under a running ring", Outcome.Served, SecondGetInflightAsync),
        new("second SET_INFLIGHT_FD under a running ring", Outcome.Served, SecondSetInflightAsync),
        new("the back-end's inflight memfd cannot be truncated", Outcome.Served, OurInflightIsSealedAsync),
        new("SET_INFLIGHT_FD with a huge mmap_size", Outcome.Served, HugeInflightSizeAsync),

        // Shared memory truncated under live rings costs only that connection.
        new("guest memory truncated under a live ring", Outcome.Disconnect, TruncateGuestMemoryAsync, Memory: FrontendMemory.Unsealable),
        new("guest memory truncated with no ring running", Outcome.Disconnect, TruncateIdleGuestMemoryAsync, Memory: FrontendMemory.Unsealable),
        new("inflight memfd truncated under a live ring", Outcome.Disconnect, TruncateInflightAsync),
        new("sealable guest memory is sealed by the back-end", Outcome.Served, SealableMemoryIsSealedAsync, Memory: FrontendMemory.Sealable),
        new("unsealed guest memory when the back-end is strict", Outcome.Nack, f => Handshaken(f, () => f.SendAsync(VhostUserRequest.SET_MEM_TABLE, f.MemoryTablePayload(), f.MemoryFds(), true)),
            new VhostUserBackendOptions { UnsealedMemory = UnsealedMemoryPolicy.Refuse }, FrontendMemory.Unsealable),
        new("unsealed inflight region when the back-end is strict", Outcome.Nack, f => Handshaken(f, () => WithUnsealableInflight(f, fd => f.SendAsync(VhostUserRequest.SET_INFLIGHT_FD, Inflight(InflightRegion.QueueRegionSize(QueueSize), 0, 1, QueueSize), [fd], true))),
            new VhostUserBackendOptions { UnsealedMemory = UnsealedMemoryPolicy.Refuse }),
        new("memory table beyond the mapped size limit", Outcome.Nack, f => Handshaken(f, () => f.SendAsync(
                VhostUserRequest.SET_MEM_TABLE, TwoRegionTable(f), [f.MemoryFile, f.MemoryFile], true)),
            new VhostUserBackendOptions { MaxMappedBytes = MemorySize + (1 << 20) }),
        new("ADD_MEM_REG beyond the mapped size limit", Outcome.Nack, f => Handshaken(f, async () =>
            {
                await f.AddMemRegAsync();
                await AddRegion(f, 0x1_0000_0000, MemorySize, 0x7f00_0000_0000, 0);
            }),
            new VhostUserBackendOptions { MaxMappedBytes = MemorySize + (1 << 20) }),

        // Device-state transfers: bounded in size and time, cancelled by the next and by the session's end.
        new("SET_DEVICE_STATE_FD flood with pipes that never close", Outcome.Served, DeviceStateFloodAsync, s_longTransfers),
        new("CHECK_DEVICE_STATE of a load whose pipe never closes", Outcome.Served, DeviceStateNeverEndsAsync, s_quickLimits),
        new("SET_DEVICE_STATE_FD save into a pipe never read", Outcome.Served, DeviceStateSaveNeverReadAsync, s_quickLimits),
        new("SET_DEVICE_STATE_FD load from dev zero", Outcome.Served, f => DeviceStateFromFileAsync(f, "/dev/zero")),
        new("SET_DEVICE_STATE_FD save to dev full", Outcome.Served, f => DeviceStateFromFileAsync(f, "/dev/full")),

        // Silence: a client cannot hold the one connection the server serves at a time.
        new("a client silent from the start", Outcome.Disconnect, _ => Task.CompletedTask, s_quickLimits),
        new("a first message stalled after six bytes", Outcome.Disconnect, f => StallAsync(f, new byte[6]), s_quickLimits),
        new("a message stalled after the handshake", Outcome.Disconnect, async f => { await f.HandshakeAsync(); await StallAsync(f, Header(1, 0x1, 0)[..5]); }, s_quickLimits),
        new("a payload that never comes", Outcome.Disconnect, f => StallAsync(f, Header(2, 0x1, 8)), s_quickLimits),

        // Queue sizes: the power of two is a split ring's rule, checked at once.
        new("SET_VRING_NUM of 100 on a split ring", Outcome.Nack, f => Handshaken(f, async () =>
        {
            Assert.That(await f.AckAsync(VhostUserRequest.SET_FEATURES, U64(Base)), Is.Zero);
            await f.SendAsync(VhostUserRequest.SET_VRING_NUM, State(0, 100), null, needReply: true);
        })),
        new("SET_VRING_NUM of 100 on a packed ring", Outcome.Served, f => Handshaken(f, async () =>
        {
            Assert.That(await f.AckAsync(VhostUserRequest.SET_FEATURES, U64(Base | VirtioFeatures.RING_PACKED)), Is.Zero);
            Assert.That(await f.AckAsync(VhostUserRequest.SET_VRING_NUM, State(0, 100)), Is.Zero, "packed rings take any size");
        })),
    ];

    [Test]
    public async Task A_silent_client_does_not_keep_the_next_frontend_waiting()
    {
        await using var backend = new BackendFixture(options: s_quickLimits);
        using var silent = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await silent.ConnectAsync(new UnixDomainSocketEndPoint(backend.SocketPath));

        // Connected while the silent one still holds the connection: served once it is dropped.
        await backend.AssertServesWellBehavedFrontendAsync();
        Assert.That(await silent.ReceiveAsync(new byte[1], SocketFlags.None).WaitAsync(TimeSpan.FromSeconds(30)), Is.Zero, "the silent client was hung up on");
    }

    [Test]
    public async Task An_indirect_table_longer_than_the_ring_is_served()
    {
        // Linux with seg_max 126 on a ring of 16 sends tables of up to 128 entries (header, data,
        // status), longer than the ring: written here by hand, as our own driver keeps to the rule.
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        BlkQueue queue = await frontend.StartDeviceAsync(16, Base | Indirect);
        const int segments = 40;
        GuestMemory memory = frontend.Memory;
        ulong header = frontend.Allocator.Allocate(16, 16);
        memory.WriteUInt32(header, 0);                           // VIRTIO_BLK_T_IN
        memory.WriteUInt64(header + 8, 16);                      // sector
        ulong[] buffers = Enumerable.Range(0, segments).Select(_ => frontend.Allocator.Allocate(512, 512)).ToArray();
        ulong status = frontend.Allocator.Allocate(1, 1);
        memory.WriteByte(status, 0xFF);
        ulong table = frontend.Allocator.Allocate((segments + 2) * 16, 16);
        WriteTableEntry(memory, table, 0, header, 16, 0, last: false);
        for (int i = 0; i < segments; i++)
        {
            WriteTableEntry(memory, table, i + 1, buffers[i], 512, VirtqueueLayout.VIRTQ_DESC_F_WRITE, last: false);
        }

        WriteTableEntry(memory, table, segments + 1, status, 1, VirtqueueLayout.VIRTQ_DESC_F_WRITE, last: true);
        Vmm.Virtio.Queues.VirtqueueParams p = queue.Driver.Params;
        WriteDescriptor(memory, p.DescriptorArea, table, (segments + 2) * 16, VirtqueueLayout.VIRTQ_DESC_F_INDIRECT);
        memory.WriteUInt16(p.DriverArea + 4, 0);
        memory.WriteUInt16Release(p.DriverArea + 2, 1);
        queue.Kick.Signal();

        await WaitUntilAsync(() => memory.ReadUInt16Acquire(p.DeviceArea + 2) == 1, "the request completed");
        Assert.That(memory.ReadByte(status), Is.Zero, "a table of 42 entries on a ring of 16 is served");
        byte[] got = buffers.SelectMany(b => { byte[] x = new byte[512]; memory.Read(b, x); return x; }).ToArray();
        Assert.That(got, Is.EqualTo(backend.OriginalImage.AsSpan(16 * 512, segments * 512).ToArray()));
    }

    [Test]
    public async Task A_buffer_across_two_adjacent_memory_regions_is_served()
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync(FrontendMemory.TwoAdjacentRegions);
        BlkQueue queue = await frontend.StartDeviceAsync(QueueSize, Base);
        ulong boundary = frontend.Memory.Regions[1].GuestPhysicalAddress;
        ulong buffer = boundary - 2048;
        byte[] pattern = RandomNumberGenerator.GetBytes(4096);
        frontend.Memory.Write(buffer, pattern);

        Assert.That(queue.Complete(queue.SubmitWrite(64, buffer, 4096)), Is.Zero, "a write from a buffer that straddles two regions");
        frontend.Memory.Clear(buffer, 4096);
        Assert.That(queue.Complete(queue.SubmitRead(64, [buffer], 4096)), Is.Zero, "and a read into it");
        byte[] back = new byte[4096];
        frontend.Memory.Read(buffer, back);
        Assert.That(back, Is.EqualTo(pattern));
    }

    private static async Task SaturatedCallAsync(ScriptedFrontend f)
    {
        // The back-end's call writes would block on a counter nobody reads; they must be dropped.
        using var call = new EventFd();
        Saturate(call);
        BlkQueue queue = await f.StartDeviceAsync(QueueSize, Base, call);
        await AssertIoAsync(queue);
        Assert.That(call.TryConsume(out ulong count), Is.True);
        Assert.That(count, Is.EqualTo(SaturatedCounter), "the counter stayed where the front-end left it");
        await f.GetVringBaseAsync(0);
    }

    private static async Task SaturatedKickAsync(ScriptedFrontend f)
    {
        BlkQueue queue = await f.StartDeviceAsync(QueueSize, Base);
        Saturate(queue.Kick);
        await AssertIoAsync(queue);
        await f.GetVringBaseAsync(0);
    }

    private static async Task FaultWithErrorFdAsync(ScriptedFrontend f, bool saturated)
    {
        using var error = new EventFd();
        if (saturated)
        {
            Saturate(error);
        }

        BlkQueue queue = await f.StartDeviceAsync(QueueSize, Base);
        Assert.That(await f.AckAsync(VhostUserRequest.SET_VRING_ERR, U64(0), [error.Handle]), Is.Zero);

        // An available index that jumps past the ring size breaks the ring (virtio 1.2, 2.7.6).
        f.Memory.WriteUInt16(queue.Driver.Params.DriverArea + 2, 1000);
        queue.Kick.Signal();
        if (!saturated)
        {
            Assert.That(error.Wait(30_000), Is.True, "SET_VRING_ERR's eventfd tells the front-end the ring broke");
        }

        // Either way the worker ended on the fault and the back-end answers.
        await WaitUntilAsync(() => OpenThreads.Describe().All(t => !t.EndsWith(":vq-blk-0", StringComparison.Ordinal)), "the faulted ring's worker ended");
        await f.GetVringBaseAsync(0);
    }

    private static async Task IndirectBeyondTheBoundAsync(ScriptedFrontend f)
    {
        using var error = new EventFd();
        BlkQueue queue = await f.StartDeviceAsync(QueueSize, Base | Indirect);
        Assert.That(await f.AckAsync(VhostUserRequest.SET_VRING_ERR, U64(0), [error.Handle]), Is.Zero);
        ulong table = f.Allocator.Allocate((ulong)(DeviceQueueLimit + 1) * 16, 16);
        Vmm.Virtio.Queues.VirtqueueParams p = queue.Driver.Params;
        WriteDescriptor(f.Memory, p.DescriptorArea, table, (uint)(DeviceQueueLimit + 1) * 16, VirtqueueLayout.VIRTQ_DESC_F_INDIRECT);
        f.Memory.WriteUInt16(p.DriverArea + 4, 0);
        f.Memory.WriteUInt16Release(p.DriverArea + 2, 1);
        queue.Kick.Signal();
        Assert.That(error.Wait(30_000), Is.True, "a table of 1025 entries breaks the ring");
    }

    private static int DeviceQueueLimit => Vmm.Virtio.Queues.DeviceQueue.MaxIndirectDescriptors;

    private static async Task SecondGetInflightAsync(ScriptedFrontend f)
    {
        await f.HandshakeAsync();
        (VhostUserInflight first, SafeFileDescriptor? region) = await GetInflightAsync(f);
        using (region)
        {
            Assert.That(region, Is.Not.Null, "the first GET_INFLIGHT_FD gets a region");
            Assert.That(await f.SetMemTableAsync(), Is.Zero);
            Assert.That(await f.AckAsync(VhostUserRequest.SET_FEATURES, U64(Base)), Is.Zero);
            BlkQueue queue = await f.StartQueueAsync(0, QueueSize, Base);
            await AssertIoAsync(queue);

            (VhostUserInflight second, SafeFileDescriptor? none) = await GetInflightAsync(f);
            Assert.That(none, Is.Null, "no region while the ring runs on the first");
            Assert.That(second.MmapSize, Is.Zero, "the spec's answer for none");
            await AssertIoAsync(queue);
            Assert.That(first.MmapSize, Is.Not.Zero);
        }
    }

    private static async Task SecondSetInflightAsync(ScriptedFrontend f)
    {
        await f.HandshakeAsync();
        (VhostUserInflight shape, SafeFileDescriptor? region) = await GetInflightAsync(f);
        using (region)
        {
            Assert.That(await f.SetMemTableAsync(), Is.Zero);
            Assert.That(await f.AckAsync(VhostUserRequest.SET_FEATURES, U64(Base)), Is.Zero);
            BlkQueue queue = await f.StartQueueAsync(0, QueueSize, Base);
            await AssertIoAsync(queue);

            Assert.That(await f.AckAsync(VhostUserRequest.SET_INFLIGHT_FD, Inflight(shape.MmapSize, shape.MmapOffset, shape.NumQueues, shape.QueueSize), [region!]), Is.Not.Zero,
                "refused while the ring runs");
            await AssertIoAsync(queue);
        }
    }

    private static async Task OurInflightIsSealedAsync(ScriptedFrontend f)
    {
        await f.HandshakeAsync();
        (_, SafeFileDescriptor? region) = await GetInflightAsync(f);
        using (region)
        {
            Assert.That(Truncate(region!, 0), Is.EqualTo(EPERM), "the back-end's memfd is sealed against shrinking");
        }
    }

    private static async Task HugeInflightSizeAsync(ScriptedFrontend f)
    {
        // The front-end may announce any mmap_size its file covers; only what the queues use is mapped.
        await f.HandshakeAsync();
        using SafeFileDescriptor fd = MemFd.Create("huge-inflight", 64UL << 30);
        Assert.That(await f.AckAsync(VhostUserRequest.SET_INFLIGHT_FD, Inflight(64UL << 30, 0, 1, QueueSize), [fd]), Is.Zero);
    }

    private static async Task TruncateGuestMemoryAsync(ScriptedFrontend f)
    {
        BlkQueue queue = await f.StartDeviceAsync(QueueSize, Base);
        await AssertIoAsync(queue);
        Truncate(f.MemoryFile, 0);

        // The worker reads the ring on the kick: the page is gone. Only this connection pays.
        queue.Kick.Signal();
    }

    private static async Task TruncateIdleGuestMemoryAsync(ScriptedFrontend f)
    {
        await f.HandshakeAsync();
        Assert.That(await f.SetMemTableAsync(), Is.Zero);
        Truncate(f.MemoryFile, 0);

        // A ring started now reads the used index from memory that is gone.
        Assert.That(await f.AckAsync(VhostUserRequest.SET_FEATURES, U64(Base)), Is.Zero);
        BlkQueue queue = new(f, Vmm.Virtio.Driver.DriverQueue.Create(f.Memory, f.Allocator, QueueSize, Base));
        try
        {
            await f.SendAsync(VhostUserRequest.SET_VRING_NUM, State(0, QueueSize));
            byte[] addr = new byte[VhostUserVringAddr.Size];
            new VhostUserVringAddr(0, 0, f.UserAddress(queue.Driver.Params.DescriptorArea), f.UserAddress(queue.Driver.Params.DeviceArea), f.UserAddress(queue.Driver.Params.DriverArea), 0).Write(addr);
            await f.SendAsync(VhostUserRequest.SET_VRING_ADDR, addr);
            await f.SendAsync(VhostUserRequest.SET_VRING_KICK, U64(0), [queue.Kick.Handle]);
            await f.SendAsync(VhostUserRequest.SET_VRING_ENABLE, State(0, 1));
        }
        finally
        {
            queue.Dispose();
        }
    }

    private static async Task TruncateInflightAsync(ScriptedFrontend f)
    {
        await f.HandshakeAsync();
        using SafeFileDescriptor inflight = TestMemfd.Create("unsealable-inflight", (long)InflightRegion.QueueRegionSize(QueueSize));
        Assert.That(await f.AckAsync(VhostUserRequest.SET_INFLIGHT_FD, Inflight(InflightRegion.QueueRegionSize(QueueSize), 0, 1, QueueSize), [inflight]), Is.Zero,
            "an unsealable region is taken under the SIGBUS guard");
        Assert.That(await f.SetMemTableAsync(), Is.Zero);
        Assert.That(await f.AckAsync(VhostUserRequest.SET_FEATURES, U64(Base)), Is.Zero);
        BlkQueue queue = await f.StartQueueAsync(0, QueueSize, Base);
        await AssertIoAsync(queue);
        Truncate(inflight, 0);

        // The worker marks the next request in flight in the region that is gone.
        queue.SubmitWrite(8, f.Allocator.Allocate(512, 512), 512);
        queue.KickDevice();
    }

    private static async Task SealableMemoryIsSealedAsync(ScriptedFrontend f)
    {
        BlkQueue queue = await f.StartDeviceAsync(QueueSize, Base);
        Assert.That(Truncate(f.MemoryFile, 0), Is.EqualTo(EPERM), "the back-end sealed the memfd against shrinking");
        await AssertIoAsync(queue);
    }

    private static async Task DeviceStateFloodAsync(ScriptedFrontend f)
    {
        await f.HandshakeAsync();
        var writers = new List<SafeFileDescriptor>();
        try
        {
            for (int i = 0; i < 50; i++)
            {
                // LOAD from a pipe whose write end stays open: the transfer would wait for ever.
                (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
                writers.Add(write);
                using (read)
                {
                    Assert.That(await SetDeviceStateFdAsync(f, VhostUserTransferDirection.LOAD, read) & 0xFF, Is.Zero, $"request {i} accepted");
                }

                // Each request cancels the transfer before it (whose thread is gone a moment after
                // it was joined): without that, 50 threads would wait out their 60 s deadline.
                await WaitUntilAsync(() => TransferThreads() <= 1, "each request replaced the transfer before it");
            }
        }
        finally
        {
            foreach (SafeFileDescriptor w in writers)
            {
                w.Dispose();
            }
        }
    }

    private static async Task DeviceStateNeverEndsAsync(ScriptedFrontend f)
    {
        await f.HandshakeAsync();
        (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
        using (write)
        {
            using (read)
            {
                Assert.That(await SetDeviceStateFdAsync(f, VhostUserTransferDirection.LOAD, read) & 0xFF, Is.Zero);
            }

            Assert.That(await f.GetU64Async(VhostUserRequest.CHECK_DEVICE_STATE), Is.Not.Zero, "a transfer past its deadline failed");
        }
    }

    private static async Task DeviceStateSaveNeverReadAsync(ScriptedFrontend f)
    {
        await f.HandshakeAsync();
        (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
        using (read)
        {
            // Fill the pipe first, so that the back-end's write must wait for a reader that never reads.
            FileDescriptors.SetNonBlocking(write);
            using (write)
            {
                Fill(write);
                Assert.That(await SetDeviceStateFdAsync(f, VhostUserTransferDirection.SAVE, write) & 0xFF, Is.Zero);
            }

            Assert.That(await f.GetU64Async(VhostUserRequest.CHECK_DEVICE_STATE), Is.Not.Zero, "a save nobody read failed at its deadline");
        }
    }

    private static async Task DeviceStateFromFileAsync(ScriptedFrontend f, string path)
    {
        await f.HandshakeAsync();
        using SafeFileDescriptor fd = Open(path);
        VhostUserTransferDirection direction = path == "/dev/zero" ? VhostUserTransferDirection.LOAD : VhostUserTransferDirection.SAVE;
        Assert.That(await SetDeviceStateFdAsync(f, direction, fd) & 0xFF, Is.Not.Zero, "a device is not a state channel");
        Assert.That(await f.GetU64Async(VhostUserRequest.CHECK_DEVICE_STATE), Is.Not.Zero, "and there is no transfer to check");
    }

    private static async Task<ulong> SetDeviceStateFdAsync(ScriptedFrontend f, VhostUserTransferDirection direction, SafeHandle fd)
    {
        byte[] payload = new byte[VhostUserDeviceStateTransfer.Size];
        new VhostUserDeviceStateTransfer(direction, VhostUserMigrationPhase.STOPPED).Write(payload);
        await f.SendAsync(VhostUserRequest.SET_DEVICE_STATE_FD, payload, [fd]);
        using VhostUserMessage reply = await f.ReceiveAsync();
        return VhostUserCodec.ReadU64(reply.Payload.Span);
    }

    private static int TransferThreads() => OpenThreads.Describe().Count(t => t.EndsWith(":vu-device-state", StringComparison.Ordinal));

    /// <summary>Sends the first bytes of a message and nothing more, keeping the connection open.</summary>
    private static Task StallAsync(ScriptedFrontend f, byte[] bytes) => f.Channel.Socket.SendAsync(bytes);

    private static async Task<(VhostUserInflight Reply, SafeFileDescriptor? Fd)> GetInflightAsync(ScriptedFrontend f)
    {
        await f.SendAsync(VhostUserRequest.GET_INFLIGHT_FD, Inflight(0, 0, 1, QueueSize));
        using VhostUserMessage reply = await f.ReceiveAsync();
        Assert.That(reply.Header.Request, Is.EqualTo((uint)VhostUserRequest.GET_INFLIGHT_FD));
        return (VhostUserInflight.Read(reply.Payload.Span), reply.Fds.Count == 1 ? reply.TakeFd(0) : null);
    }

    private static async Task AssertIoAsync(BlkQueue queue)
    {
        byte[] pattern = RandomNumberGenerator.GetBytes(4096);
        await Task.Run(() =>
        {
            Assert.That(queue.Write(24, pattern), Is.Zero, "write status");
            byte[] back = new byte[4096];
            Assert.That(queue.Read(24, back), Is.Zero, "read status");
            Assert.That(back, Is.EqualTo(pattern), "read back what was written");
        });
    }

    private static async Task WaitUntilAsync(Func<bool> condition, string what)
    {
        DateTime deadline = DateTime.UtcNow.AddSeconds(30);
        while (!condition())
        {
            Assert.That(DateTime.UtcNow, Is.LessThan(deadline), what);
            await Task.Delay(20);
        }
    }

    /// <summary>Pushes the counter to its maximum; a count the other side left pending is taken first (the write would not fit).</summary>
    private static unsafe void Saturate(EventFd e)
    {
        ulong value = SaturatedCounter;
        for (int attempt = 0; attempt < 100; attempt++)
        {
            e.TryConsume();
            if (Syscall.write((int)e.Handle.DangerousGetHandle(), &value, sizeof(ulong)) == sizeof(ulong))
            {
                return;
            }
        }

        Assert.Fail("the eventfd could not be saturated");
    }

    private static unsafe void Fill(SafeFileDescriptor nonBlockingPipe)
    {
        byte* chunk = stackalloc byte[4096];
        while (Syscall.write((int)nonBlockingPipe.DangerousGetHandle(), chunk, 4096) > 0)
        {
        }
    }

    private static int Truncate(SafeFileDescriptor fd, long size) =>
        Syscall.ftruncate((int)fd.DangerousGetHandle(), size) == 0 ? 0 : (int)NativeConvert.FromErrno(Stdlib.GetLastError());

    private static SafeFileDescriptor Open(string path)
    {
        int fd = Syscall.open(path, OpenFlags.O_RDWR | OpenFlags.O_CLOEXEC);
        Assert.That(fd, Is.GreaterThanOrEqualTo(0), path);
        return new SafeFileDescriptor(fd);
    }

    private static void WriteDescriptor(GuestMemory memory, ulong at, ulong address, uint length, ushort flags)
    {
        memory.WriteUInt64(at, address);
        memory.WriteUInt32(at + 8, length);
        memory.WriteUInt16(at + 12, flags);
        memory.WriteUInt16(at + 14, 0);
    }

    /// <summary>Entry <paramref name="index"/> of an indirect table, chained to the next unless it is the last.</summary>
    private static void WriteTableEntry(GuestMemory memory, ulong table, int index, ulong address, uint length, ushort flags, bool last)
    {
        ulong at = table + ((ulong)index * 16);
        WriteDescriptor(memory, at, address, length, last ? flags : (ushort)(flags | VirtqueueLayout.VIRTQ_DESC_F_NEXT));
        memory.WriteUInt16(at + 14, last ? (ushort)0 : (ushort)(index + 1));
    }

    /// <summary>A memory table of two 16 MiB regions at GPA 0 and 4 GiB, both from guest RAM's file.</summary>
    private static byte[] TwoRegionTable(ScriptedFrontend f)
    {
        byte[] payload = new byte[VhostUserMemoryTable.PayloadSize(2)];
        VhostUserMemoryTable.Write(payload,
        [
            new VhostUserMemoryRegion(0, MemorySize, f.UserAddress(0), 0),
            new VhostUserMemoryRegion(0x1_0000_0000, MemorySize, 0x7f00_0000_0000, 0),
        ]);
        return payload;
    }

    private static async Task WithPipe(Func<SafeHandle, SafeHandle, Task> send)
    {
        (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
        using (read)
        using (write)
        {
            await send(read, write);
        }
    }

    private static async Task WithFile(string path, Func<SafeHandle, Task> send)
    {
        using SafeFileDescriptor fd = Open(path);
        await send(fd);
    }

    private static async Task WithSocket(Func<SafeHandle, Task> send)
    {
        (Socket a, Socket b) = UnixSocketPair.Create();
        using (a)
        using (b)
        {
            await send(a.SafeHandle);
        }
    }

    private static async Task WithUnsealableInflight(ScriptedFrontend f, Func<SafeHandle, Task> send)
    {
        using SafeFileDescriptor fd = TestMemfd.Create("unsealable-inflight", (long)InflightRegion.QueueRegionSize(QueueSize));
        await send(fd);
    }
}
