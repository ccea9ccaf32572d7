using System.Diagnostics;
using System.Net.Sockets;
using NUnit.Framework;
using Vmm.Core.Events;
using Vmm.Core.Memory;
using Vmm.Core.Posix.Sockets;
using Vmm.Virtio.Queues;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Tests.Frontend;

[TestFixture]
public sealed class FrontendConnectionTests
{
    private const VhostUserProtocolFeatures AllOffered =
        VhostUserProtocolFeatures.MQ | VhostUserProtocolFeatures.LOG_SHMFD | VhostUserProtocolFeatures.REPLY_ACK |
        VhostUserProtocolFeatures.BACKEND_REQ | VhostUserProtocolFeatures.CONFIG | VhostUserProtocolFeatures.RESET_DEVICE |
        VhostUserProtocolFeatures.CONFIGURE_MEM_SLOTS | VhostUserProtocolFeatures.STATUS | VhostUserProtocolFeatures.INFLIGHT_SHMFD |
        VhostUserProtocolFeatures.SHMEM | (VhostUserProtocolFeatures)(1UL << 22);

    [Test]
    public async Task Handshake_must_follow_the_strict_order_and_ack_only_supported_bits()
    {
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) =
            ScriptedBackend.CreatePair(new VhostUserFrontendConnectionOptions { ConfigSize = 8 });
        using (frontend)
        using (backend)
        {
            Task<VhostUserBackendInfo> handshake = frontend.HandshakeAsync();
            await backend.ExpectGetU64Async(VhostUserRequest.GET_FEATURES, ScriptedBackend.DefaultFeatures);
            await backend.ExpectGetU64Async(VhostUserRequest.GET_PROTOCOL_FEATURES, (ulong)AllOffered);
            using (VhostUserMessage set = await backend.ExpectAsync(VhostUserRequest.SET_PROTOCOL_FEATURES))
            {
                Assert.That(VhostUserCodec.NeedsReply(set.Header), Is.False, "REPLY_ACK is not in force yet");
                var acked = (VhostUserProtocolFeatures)VhostUserCodec.ReadU64(set.Payload.Span);
                Assert.That(acked, Is.EqualTo(AllOffered & VhostUserFrontendConnection.SupportedProtocolFeatures));
                Assert.That((ulong)acked >> 20, Is.Zero, "never bits ≥ 20");
            }

            using (VhostUserMessage owner = await backend.ExpectAsync(VhostUserRequest.SET_OWNER))
            {
                Assert.That(VhostUserCodec.NeedsReply(owner.Header), Is.True, "REPLY_ACK on every SET once negotiated");
            }

            await backend.ExpectGetU64Async(VhostUserRequest.GET_QUEUE_NUM, 4);
            await backend.ExpectGetU64Async(VhostUserRequest.GET_MAX_MEM_SLOTS, 32);
            using (VhostUserMessage get = await backend.ExpectAsync(VhostUserRequest.GET_CONFIG))
            {
                var config = VhostUserConfig.Parse(get.Payload.Span);
                Assert.That((config.Header.Offset, config.Header.Size), Is.EqualTo((0u, 8u)));
                var reply = new byte[VhostUserConfig.HeaderSize + 8];
                VhostUserConfig.WritePayload(reply, 0, VhostUserConfigFlags.FRONTEND, [1, 2, 3, 4, 5, 6, 7, 8]);
                await backend.ReplyAsync(VhostUserRequest.GET_CONFIG, reply);
            }

            await backend.ExpectBackendReqFdAsync();
            VhostUserBackendInfo info = await handshake;
            Assert.That(backend.Log, Is.EqualTo(new[]
            {
                VhostUserRequest.GET_FEATURES, VhostUserRequest.GET_PROTOCOL_FEATURES, VhostUserRequest.SET_PROTOCOL_FEATURES,
                VhostUserRequest.SET_OWNER, VhostUserRequest.GET_QUEUE_NUM, VhostUserRequest.GET_MAX_MEM_SLOTS, VhostUserRequest.GET_CONFIG,
                VhostUserRequest.SET_BACKEND_REQ_FD,
            }));
            Assert.That(info.QueueCount, Is.EqualTo(4));
            Assert.That(info.MaxMemSlots, Is.EqualTo(32));
            Assert.That(info.Config, Is.EqualTo(new byte[] { 1, 2, 3, 4, 5, 6, 7, 8 }));
        }
    }

    [Test]
    public async Task Backend_channel_must_report_config_changes_ack_them_and_refuse_other_requests()
    {
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) = ScriptedBackend.CreatePair();
        using (frontend)
        using (backend)
        {
            int changes = 0;
            var notices = new List<string>();
            frontend.BackendConfigChanged += () =>
            {
                Interlocked.Increment(ref changes);
                frontend.ConfigChangeTaken();
            };
            frontend.BackendChannelNotice += notice =>
            {
                lock (notices)
                {
                    notices.Add(notice);
                }
            };
            Task<VhostUserBackendInfo> handshake = frontend.HandshakeAsync();
            await backend.ServeHandshakeAsync(
                protocolFeatures: VhostUserProtocolFeatures.REPLY_ACK | VhostUserProtocolFeatures.BACKEND_REQ);
            await handshake;
            Assert.That(frontend.HasBackendChannel, Is.True);
            VhostUserChannel channel = backend.BackendChannel!;

            await channel.SendAsync(VhostUserCodec.BackendRequestHeader(VhostUserBackendRequest.CONFIG_CHANGE_MSG, 0, needReply: true), default);
            Assert.That(await ReceiveAckAsync(channel, VhostUserBackendRequest.CONFIG_CHANGE_MSG), Is.Zero);
            Assert.That(Volatile.Read(ref changes), Is.EqualTo(1));

            // Without NEED_REPLY: no answer, still reported.
            await channel.SendAsync(VhostUserCodec.BackendRequestHeader(VhostUserBackendRequest.CONFIG_CHANGE_MSG, 0), default);

            byte[] state = new byte[VhostUserVringState.Size];
            new VhostUserVringState(0, 0).Write(state);
            await channel.SendAsync(VhostUserCodec.BackendRequestHeader(VhostUserBackendRequest.VRING_ERR, state.Length, needReply: true), state);
            Assert.That(await ReceiveAckAsync(channel, VhostUserBackendRequest.VRING_ERR), Is.Not.Zero, "not handled: refused");
            Assert.That(Volatile.Read(ref changes), Is.EqualTo(2));
            lock (notices)
            {
                Assert.That(notices, Has.Some.Contains("VRING_ERR"));
            }

            // Disposing the connection ends the loop.
            Task loop = frontend.BackendChannelCompletion!;
            frontend.Dispose();
            await loop.WaitAsync(TimeSpan.FromSeconds(5));
        }
    }

    private static async Task<ulong> ReceiveAckAsync(VhostUserChannel channel, VhostUserBackendRequest request)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        using VhostUserMessage reply = await channel.ReceiveAsync(cts.Token);
        VhostUserCodec.ValidateBackendReplyHeader(reply.Header, request);
        return VhostUserCodec.ReadU64(reply.Payload.Span);
    }

    [Test]
    public async Task Handshake_must_not_send_GET_QUEUE_NUM_or_GET_CONFIG_unless_MQ_and_CONFIG_are_acked()
    {
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) =
            ScriptedBackend.CreatePair(new VhostUserFrontendConnectionOptions { ConfigSize = 60 });
        using (frontend)
        using (backend)
        {
            Task<VhostUserBackendInfo> handshake = frontend.HandshakeAsync();
            await backend.ServeHandshakeAsync(protocolFeatures: VhostUserProtocolFeatures.REPLY_ACK);
            VhostUserBackendInfo info = await handshake;

            // The next request on the wire is the one we send now: nothing else was queued.
            Task<ulong> probe = frontend.GetU64Async(VhostUserRequest.GET_FEATURES);
            await backend.ExpectGetU64Async(VhostUserRequest.GET_FEATURES, ScriptedBackend.DefaultFeatures);
            await probe;
            Assert.That(backend.Log, Does.Not.Contain(VhostUserRequest.GET_QUEUE_NUM).And.Not.Contain(VhostUserRequest.GET_CONFIG)
                .And.Not.Contain(VhostUserRequest.GET_MAX_MEM_SLOTS));
            Assert.That(info.QueueCount, Is.Null);
            Assert.That(info.Config, Is.Null);
        }
    }

    [Test]
    public async Task Handshake_without_PROTOCOL_FEATURES_must_skip_protocol_negotiation()
    {
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) = ScriptedBackend.CreatePair();
        using (frontend)
        using (backend)
        {
            Task<VhostUserBackendInfo> handshake = frontend.HandshakeAsync();
            await backend.ExpectGetU64Async(VhostUserRequest.GET_FEATURES, 1UL << 32);
            using (VhostUserMessage owner = await backend.ExpectAsync(VhostUserRequest.SET_OWNER))
            {
                Assert.That(VhostUserCodec.NeedsReply(owner.Header), Is.False);
            }

            VhostUserBackendInfo info = await handshake;
            Assert.That(info.ProtocolFeatures, Is.EqualTo(VhostUserProtocolFeatures.None));
        }
    }

    [Test]
    public async Task Handshake_must_refuse_a_backend_without_VERSION_1()
    {
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) = ScriptedBackend.CreatePair();
        using (frontend)
        using (backend)
        {
            Task<VhostUserBackendInfo> handshake = frontend.HandshakeAsync();
            await backend.ExpectGetU64Async(VhostUserRequest.GET_FEATURES, 1UL << 30);
            var e = await Assert.ThrowsAsync<VhostUserIncompatibleBackendException>(async () => await handshake);
            Assert.That(e!.Message, Does.Contain("back-end offers no VERSION_1"));
        }
    }

    [Test]
    public async Task StartRing_and_StopRing_must_send_exactly_the_ring_messages()
    {
        using GuestMemory memory = GuestMemory.Create(1 << 20);
        using var kick = new EventFd();
        using var call = new EventFd();
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) = ScriptedBackend.CreatePair();
        using (frontend)
        using (backend)
        {
            Task handshake = frontend.HandshakeAsync();
            await backend.ServeHandshakeAsync(protocolFeatures: VhostUserProtocolFeatures.REPLY_ACK);
            await handshake;

            Task<ulong> setFeatures = frontend.SetFeaturesAsync(ScriptedBackend.DefaultFeatures | (1UL << 26) | (1UL << 40));
            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_FEATURES))
            {
                ulong expected = (ScriptedBackend.DefaultFeatures & ~(1UL << 26)) | (1UL << 30);
                Assert.That(VhostUserCodec.ReadU64(m.Payload.Span), Is.EqualTo(expected));
            }

            await setFeatures;

            Task setMemory = frontend.SetMemoryAsync(memory);
            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_MEM_TABLE))
            {
                Assert.That(m.Fds, Has.Count.EqualTo(1));
                VhostUserMemoryRegion[] regions = VhostUserMemoryTable.ReadRegions(m.Payload.Span);
                Assert.That(regions, Has.Length.EqualTo(1));
                Assert.That(regions[0].GuestPhysAddr, Is.Zero);
                Assert.That(regions[0].MemorySize, Is.EqualTo(1UL << 20));
                Assert.That(regions[0].UserspaceAddr, Is.EqualTo(memory.Regions[0].UserAddress));
            }

            await setMemory;

            var queue = new VirtqueueParams(64, 0x1000, 0x2000, 0x3000);
            (ulong desc, ulong driver, ulong device) = VhostUserFrontendConnection.TranslateRing(memory, queue, packed: false);
            Task start = frontend.StartRingAsync(new VhostUserRingSetup(1, 64, desc, driver, device, 7, kick.Handle, call.Handle));
            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_VRING_NUM))
            {
                VhostUserVringState s = VhostUserVringState.Read(m.Payload.Span);
                Assert.That((s.Index, s.Num), Is.EqualTo((1u, 64u)));
            }

            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_VRING_ADDR))
            {
                VhostUserVringAddr a = VhostUserVringAddr.Read(m.Payload.Span);
                ulong ua = memory.Regions[0].UserAddress;
                Assert.That((a.Index, a.Descriptor, a.Available, a.Used), Is.EqualTo((1u, ua + 0x1000, ua + 0x2000, ua + 0x3000)));
            }

            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_VRING_BASE))
            {
                VhostUserVringState s = VhostUserVringState.Read(m.Payload.Span);
                Assert.That((s.Index, s.Num), Is.EqualTo((1u, 7u)));
            }

            // The call fd before the kick: a back-end may start the ring on its kick.
            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_VRING_CALL))
            {
                Assert.That(m.Fds, Has.Count.EqualTo(1));
                Assert.That(VhostUserCodec.ReadU64(m.Payload.Span), Is.EqualTo(1UL));
            }

            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_VRING_KICK))
            {
                Assert.That(m.Fds, Has.Count.EqualTo(1));
                Assert.That(VhostUserCodec.ReadU64(m.Payload.Span), Is.EqualTo(1UL));
            }

            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_VRING_ENABLE))
            {
                VhostUserVringState s = VhostUserVringState.Read(m.Payload.Span);
                Assert.That((s.Index, s.Num), Is.EqualTo((1u, 1u)));
            }

            await start;

            // The back-end published used idx 5 in the guest's used ring before it stopped.
            memory.WriteUInt16(0x3000 + 2, 5);
            Task<VirtqueueState> stop = frontend.StopRingAsync(1, memory, queue);
            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_VRING_ENABLE))
            {
                Assert.That(VhostUserVringState.Read(m.Payload.Span).Num, Is.Zero);
            }

            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.GET_VRING_BASE))
            {
                Assert.That(VhostUserCodec.NeedsReply(m.Header), Is.False, "GET_VRING_BASE has its own reply");
                var reply = new byte[VhostUserVringState.Size];
                new VhostUserVringState(1, 9).Write(reply);
                await backend.ReplyAsync(VhostUserRequest.GET_VRING_BASE, reply);
            }

            Assert.That(await stop, Is.EqualTo(new VirtqueueState(9, 5)));
        }
    }

    [Test]
    public async Task Memory_must_go_as_ADD_MEM_REG_when_CONFIGURE_MEM_SLOTS_is_negotiated()
    {
        using GuestMemory memory = GuestMemory.Create([new GuestMemoryRange(0, 1 << 20), new GuestMemoryRange(1 << 24, 1 << 20)]);
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) = ScriptedBackend.CreatePair();
        using (frontend)
        using (backend)
        {
            Task handshake = frontend.HandshakeAsync();
            await backend.ServeHandshakeAsync(protocolFeatures: VhostUserProtocolFeatures.REPLY_ACK | VhostUserProtocolFeatures.CONFIGURE_MEM_SLOTS);
            await handshake;

            Task set = frontend.SetMemoryAsync(memory);
            foreach (GuestMemoryRegion region in memory.Regions)
            {
                using VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.ADD_MEM_REG);
                Assert.That(m.Fds, Has.Count.EqualTo(1));
                Assert.That(VhostUserSingleMemoryRegion.Read(m.Payload.Span).Region.GuestPhysAddr, Is.EqualTo(region.GuestPhysicalAddress));
            }

            await set;
            Task remove = frontend.RemoveMemoryRegionAsync(memory.Regions[1]);
            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.REM_MEM_REG))
            {
                Assert.That(m.Fds, Is.Empty);
            }

            await remove;
        }
    }

    [Test]
    public async Task Reset_and_config_must_send_RESET_DEVICE_GET_CONFIG_and_SET_CONFIG()
    {
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) = ScriptedBackend.CreatePair();
        using (frontend)
        using (backend)
        {
            Task handshake = frontend.HandshakeAsync();
            await backend.ServeHandshakeAsync(protocolFeatures: VhostUserProtocolFeatures.REPLY_ACK |
                VhostUserProtocolFeatures.RESET_DEVICE | VhostUserProtocolFeatures.CONFIG);
            await handshake;

            Task reset = frontend.ResetDeviceAsync();
            await backend.ExpectAndDropAsync(VhostUserRequest.RESET_DEVICE);
            await reset;

            Task write = frontend.SetConfigAsync(4, new byte[] { 9, 8 });
            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_CONFIG))
            {
                var parsed = VhostUserConfig.Parse(m.Payload.Span);
                Assert.That((parsed.Header.Offset, parsed.Data.ToArray()), Is.EqualTo((4u, new byte[] { 9, 8 })));
            }

            await write;

            // An empty GET_CONFIG reply is the back-end's error signal: no data, no exception.
            Task<byte[]?> read = frontend.GetConfigAsync(0, 4);
            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.GET_CONFIG))
            {
                await backend.ReplyAsync(VhostUserRequest.GET_CONFIG, []);
            }

            Assert.That(await read, Is.Null);
        }
    }

    [Test]
    public async Task A_nonzero_REPLY_ACK_must_throw_VhostUserRequestFailedException_and_keep_the_connection()
    {
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) = ScriptedBackend.CreatePair();
        using (frontend)
        using (backend)
        {
            Task handshake = frontend.HandshakeAsync();
            await backend.ServeHandshakeAsync(protocolFeatures: VhostUserProtocolFeatures.REPLY_ACK);
            await handshake;

            Task set = frontend.SetFeaturesAsync(ScriptedBackend.DefaultFeatures);
            await backend.ExpectAndDropAsync(VhostUserRequest.SET_FEATURES, ack: 1);
            var e = await Assert.ThrowsAsync<VhostUserRequestFailedException>(async () => await set);
            Assert.That(e!.Request, Is.EqualTo(VhostUserRequest.SET_FEATURES));
            Assert.That(frontend.IsDead, Is.False);
        }
    }

    // --- Bad back-ends: each gives a clear error, the connection is dead, and no fd leaks. -------

    [Test]
    public async Task A_backend_that_hangs_must_count_as_lost_after_the_timeout()
    {
        int before = await ScriptedBackend.CountFdsAfterWarmUpAsync();
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) =
            ScriptedBackend.CreatePair(new VhostUserFrontendConnectionOptions { RequestTimeout = TimeSpan.FromMilliseconds(200) });
        using (frontend)
        using (backend)
        {
            var clock = Stopwatch.StartNew();
            Task<VhostUserBackendInfo> handshake = frontend.HandshakeAsync();
            using VhostUserMessage ignored = await backend.ExpectAsync(VhostUserRequest.GET_FEATURES);
            var e = await Assert.ThrowsAsync<VhostUserConnectionLostException>(async () => await handshake);
            Assert.That(clock.Elapsed, Is.LessThan(TimeSpan.FromSeconds(3)), "no hang past the timeout");
            Assert.That(e!.Message, Does.Contain("GET_FEATURES").And.Contain("0.2 s"));
            Assert.That(frontend.IsDead, Is.True);
            await Assert.ThrowsAsync<VhostUserConnectionLostException>(async () => await frontend.GetU64Async(VhostUserRequest.GET_FEATURES));
        }

        Assert.That(ScriptedBackend.OpenFdCount(), Is.EqualTo(before));
    }

    [TestCase(0)]
    [TestCase(12)]
    [TestCase(15)]
    public async Task A_backend_that_closes_mid_reply_must_raise_connection_lost(int bytesSent)
    {
        int before = await ScriptedBackend.CountFdsAfterWarmUpAsync();
        (Socket first, Socket raw) = UnixSocketPair.Create();
        using (raw)
        using (VhostUserFrontendConnection frontend = VhostUserFrontendConnection.FromSocket(first))
        {
            Task<VhostUserBackendInfo> handshake = frontend.HandshakeAsync();
            var request = new byte[VhostUserHeader.Size];
            int got = 0;
            while (got < request.Length)
            {
                got += await raw.ReceiveAsync(request.AsMemory(got), SocketFlags.None);
            }

            Assert.That(VhostUserHeader.Read(request).Request, Is.EqualTo((uint)VhostUserRequest.GET_FEATURES));

            // A reply header announcing 8 bytes, then only part of the message, then the close.
            var reply = new byte[VhostUserHeader.Size + 8];
            VhostUserCodec.ReplyHeader(VhostUserRequest.GET_FEATURES, 8).Write(reply);
            await raw.SendAsync(reply.AsMemory(0, bytesSent), SocketFlags.None);
            raw.Shutdown(SocketShutdown.Both);

            var e = await Assert.ThrowsAsync<VhostUserConnectionLostException>(async () => await handshake);
            Assert.That(e!.Message, Is.Not.Empty);
            Assert.That(frontend.IsDead, Is.True);
        }

        Assert.That(ScriptedBackend.OpenFdCount(), Is.EqualTo(before));
    }

    [TestCase(0x1u, "flags 0x1")]
    [TestCase(0xDu, "flags 0xd")]
    public async Task A_reply_with_wrong_flags_must_be_a_protocol_violation(uint flags, string expected)
    {
        await AssertBadReplyAsync(b => b.ReplyRawAsync((uint)VhostUserRequest.GET_FEATURES, flags, BitConverter.GetBytes(1UL << 32)), expected);
    }

    [Test]
    public async Task A_reply_with_a_wrong_request_code_must_be_a_protocol_violation()
    {
        await AssertBadReplyAsync(
            b => b.ReplyRawAsync((uint)VhostUserRequest.GET_PROTOCOL_FEATURES, 0x5, BitConverter.GetBytes(1UL << 32)),
            "expected GET_FEATURES");
    }

    [Test]
    public async Task An_oversized_reply_must_be_a_protocol_violation()
    {
        await AssertBadReplyAsync(b => b.ReplyRawAsync((uint)VhostUserRequest.GET_FEATURES, 0x5, new byte[16]), "payload size 16");
    }

    [Test]
    public async Task A_reply_with_too_many_fds_must_be_a_protocol_violation_and_close_them()
    {
        await AssertBadReplyAsync(async b =>
        {
            using var fd = ScriptedBackend.NewFd();
            await b.ReplyAsync(VhostUserRequest.GET_FEATURES, BitConverter.GetBytes(1UL << 32), [fd]);
        }, "carries 1 fds");
    }

    private static async Task AssertBadReplyAsync(Func<ScriptedBackend, ValueTask> reply, string expected)
    {
        int before = await ScriptedBackend.CountFdsAfterWarmUpAsync();
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) = ScriptedBackend.CreatePair();
        using (frontend)
        using (backend)
        {
            Task<VhostUserBackendInfo> handshake = frontend.HandshakeAsync();
            using (VhostUserMessage ignored = await backend.ExpectAsync(VhostUserRequest.GET_FEATURES))
            {
                await reply(backend);
            }

            var e = await Assert.ThrowsAsync<VhostUserProtocolException>(async () => await handshake);
            Assert.That(e!.Message, Does.Contain(expected));
            Assert.That(frontend.IsDead, Is.True);
        }

        Assert.That(ScriptedBackend.OpenFdCount(), Is.EqualTo(before));
    }
}
