using NUnit.Framework;
using Vmm.Core.Posix;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Tests.Frontend;

/// <summary>Replies of a hostile back-end that size something on our side: each is checked before it is used.</summary>
[TestFixture]
public sealed class HostileReplyTests
{
    private static async Task<(VhostUserFrontendConnection Frontend, ScriptedBackend Backend)> HandshakenAsync(VhostUserProtocolFeatures features)
    {
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) = ScriptedBackend.CreatePair();
        Task<VhostUserBackendInfo> handshake = frontend.HandshakeAsync();
        await backend.ServeHandshakeAsync(protocolFeatures: features);
        await handshake;
        return (frontend, backend);
    }

    private static byte[] Inflight(ulong size, ulong offset)
    {
        byte[] payload = new byte[VhostUserInflight.Size];
        new VhostUserInflight(size, offset, 1, 256).Write(payload);
        return payload;
    }

    [Test]
    public async Task GET_INFLIGHT_FD_refused_without_an_fd_means_no_inflight_tracking()
    {
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) = await HandshakenAsync(VhostUserProtocolFeatures.INFLIGHT_SHMFD);
        using (frontend)
        using (backend)
        {
            Task<VhostUserInflightRegion?> get = frontend.GetInflightFdAsync(1, 256);
            await backend.ExpectAndDropAsync(VhostUserRequest.GET_INFLIGHT_FD);
            await backend.ReplyAsync(VhostUserRequest.GET_INFLIGHT_FD, Inflight(0, 0));
            Assert.That(await get, Is.Null);
            Assert.That(frontend.IsDead, Is.False, "a refusal is an answer, not a broken connection");
        }
    }

    [TestCase(8192UL, 0UL, TestName = "GET_INFLIGHT_FD_reply_larger_than_its_file_is_refused")]
    [TestCase(4096UL, 4096UL, TestName = "GET_INFLIGHT_FD_reply_at_an_offset_past_its_file_is_refused")]
    [TestCase(ulong.MaxValue, 4096UL, TestName = "GET_INFLIGHT_FD_reply_whose_range_wraps_is_refused")]
    [TestCase(512UL << 20, 0UL, TestName = "GET_INFLIGHT_FD_reply_beyond_the_size_limit_is_refused")]
    public async Task GET_INFLIGHT_FD_reply_sizes_are_checked_against_the_file(ulong size, ulong offset)
    {
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) = await HandshakenAsync(VhostUserProtocolFeatures.INFLIGHT_SHMFD);
        using (frontend)
        using (backend)
        using (SafeFileDescriptor file = MemFd.Create("hostile-inflight", 4096))
        {
            Task<VhostUserInflightRegion?> get = frontend.GetInflightFdAsync(1, 256);
            await backend.ExpectAndDropAsync(VhostUserRequest.GET_INFLIGHT_FD);
            await backend.ReplyAsync(VhostUserRequest.GET_INFLIGHT_FD, Inflight(size, offset), [file]);
            VhostUserProtocolException? e = await Assert.ThrowsAsync<VhostUserProtocolException>(async () => await get);
            Assert.That(e!.Message, Does.Contain("inflight region"));
        }
    }

    [Test]
    public void An_inflight_region_is_read_with_pread_and_a_file_that_shrank_is_an_error_not_a_crash()
    {
        // A plain file, which the back-end can shrink (a memfd of ours would be sealed).
        string path = Path.Combine(Path.GetTempPath(), $"inflight-{Guid.NewGuid():N}");
        Microsoft.Win32.SafeHandles.SafeFileHandle opened = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, FileOptions.DeleteOnClose);
        RandomAccess.Write(opened, new byte[8192], 0);
        var fd = new SafeFileDescriptor((int)opened.DangerousGetHandle());
        opened.SetHandleAsInvalid();
        using var region = new VhostUserInflightRegion(fd, 4096, 4096, 1, 256);
        using (var file = new Microsoft.Win32.SafeHandles.SafeFileHandle(fd.DangerousGetHandle(), ownsHandle: false))
        {
            RandomAccess.Write(file, new byte[] { 7, 8, 9 }, 4096);
        }

        Assert.That(region.ReadAll().Take(3), Is.EqualTo(new byte[] { 7, 8, 9 }));
        using (var file = new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(fd.DangerousGetHandle(), ownsHandle: false), FileAccess.ReadWrite, 0))
        {
            file.SetLength(100);
        }

        Assert.That(() => region.ReadAll(), Throws.TypeOf<VhostUserProtocolException>());
    }

    [Test]
    public async Task GET_MAX_MEM_SLOTS_of_zero_is_refused_at_the_handshake()
    {
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) = ScriptedBackend.CreatePair();
        using (frontend)
        using (backend)
        {
            Task<VhostUserBackendInfo> handshake = frontend.HandshakeAsync();
            await backend.ServeHandshakeAsync(protocolFeatures: VhostUserProtocolFeatures.CONFIGURE_MEM_SLOTS, maxMemSlots: 0);
            await Assert.ThrowsAsync<VhostUserIncompatibleBackendException>(async () => await handshake);
        }
    }

    [Test]
    public async Task Bytes_sent_while_no_request_is_outstanding_end_the_connection_and_replies_do_not()
    {
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) = await HandshakenAsync(VhostUserProtocolFeatures.None);
        using (frontend)
        using (backend)
        using (var stop = new CancellationTokenSource())
        {
            Task<string> watch = frontend.WatchIdleAsync(stop.Token);

            // Requests and their replies go on while the watch is pending.
            for (int i = 0; i < 20; i++)
            {
                Task<ulong> get = frontend.GetU64Async(VhostUserRequest.GET_FEATURES);
                await backend.ExpectGetU64Async(VhostUserRequest.GET_FEATURES, (ulong)i);
                Assert.That(await get, Is.EqualTo((ulong)i));
            }

            Assert.That(watch.IsCompleted, Is.False, "a reply read by its request is not a violation");
            await backend.ReplyU64Async(VhostUserRequest.GET_VRING_BASE, 0);
            string reason = await watch;
            Assert.That(reason, Does.Contain("while no request was outstanding"));
            Assert.That(frontend.IsDead, Is.True);
        }
    }

    [Test]
    public async Task A_hang_up_while_idle_is_seen_without_a_request()
    {
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) = await HandshakenAsync(VhostUserProtocolFeatures.None);
        using (frontend)
        using (var stop = new CancellationTokenSource())
        {
            Task<string> watch = frontend.WatchIdleAsync(stop.Token);
            backend.Dispose();
            Assert.That(await watch, Does.Contain("closed the connection"));
            Assert.That(frontend.IsDead, Is.True);
        }
    }

    [Test]
    public async Task A_flood_of_CONFIG_CHANGE_MSG_is_one_pending_change()
    {
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) =
            await HandshakenAsync(VhostUserProtocolFeatures.REPLY_ACK | VhostUserProtocolFeatures.BACKEND_REQ);
        using (frontend)
        using (backend)
        {
            int changes = 0;
            frontend.BackendConfigChanged += () => Interlocked.Increment(ref changes);
            Vmm.VhostUser.Channel.VhostUserChannel channel = backend.BackendChannel!;
            for (int i = 0; i < 1000; i++)
            {
                await channel.SendAsync(VhostUserCodec.BackendRequestHeader(VhostUserBackendRequest.CONFIG_CHANGE_MSG, 0), default);
            }

            // The last one asks for an ack: every one before it was handled by then.
            await channel.SendAsync(VhostUserCodec.BackendRequestHeader(VhostUserBackendRequest.CONFIG_CHANGE_MSG, 0, needReply: true), default);
            using (Vmm.VhostUser.Channel.VhostUserMessage ack = await channel.ReceiveAsync())
            {
                Assert.That(VhostUserCodec.ReadU64(ack.Payload.Span), Is.Zero);
            }

            Assert.That(Volatile.Read(ref changes), Is.EqualTo(1), "one pending change until it is taken");

            frontend.ConfigChangeTaken();
            await channel.SendAsync(VhostUserCodec.BackendRequestHeader(VhostUserBackendRequest.CONFIG_CHANGE_MSG, 0, needReply: true), default);
            using (Vmm.VhostUser.Channel.VhostUserMessage ack = await channel.ReceiveAsync())
            {
                Assert.That(VhostUserCodec.ReadU64(ack.Payload.Span), Is.Zero);
            }

            Assert.That(Volatile.Read(ref changes), Is.EqualTo(2), "a change after the taken one is announced again");
        }
    }

    [Test]
    public async Task A_device_state_pipe_held_open_ends_with_the_connection()
    {
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) = await HandshakenAsync(VhostUserProtocolFeatures.DEVICE_STATE);
        using (backend)
        {
            Task<byte[]> save = frontend.SaveDeviceStateAsync();
            using VhostUserMessage set = await backend.ExpectAsync(VhostUserRequest.SET_DEVICE_STATE_FD);
            Assert.That(set.Fds, Has.Count.EqualTo(1), "the pipe's write end");

            // Our channel is used (bit 8), and its write end is kept open without a byte written.
            await backend.ReplyU64Async(VhostUserRequest.SET_DEVICE_STATE_FD, 0x100);
            Assert.That(save.IsCompleted, Is.False);
            frontend.Dispose();
            Assert.That(async () => await save, Throws.InstanceOf<VhostUserConnectionLostException>());
        }
    }

    [Test]
    public async Task A_device_state_channel_that_is_no_pipe_or_socket_is_refused()
    {
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) = await HandshakenAsync(VhostUserProtocolFeatures.DEVICE_STATE);
        using (frontend)
        using (backend)
        using (SafeFileDescriptor file = MemFd.Create("not-a-pipe", 4096))
        {
            Task<byte[]> save = frontend.SaveDeviceStateAsync();
            await backend.ExpectAndDropAsync(VhostUserRequest.SET_DEVICE_STATE_FD);
            await backend.ReplyAsync(VhostUserRequest.SET_DEVICE_STATE_FD, BitConverter.GetBytes(0UL), [file]);
            VhostUserProtocolException? e = await Assert.ThrowsAsync<VhostUserProtocolException>(async () => await save);
            Assert.That(e!.Message, Does.Contain("not a pipe or a socket"));
        }
    }
}
