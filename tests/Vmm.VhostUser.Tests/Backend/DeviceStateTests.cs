using NUnit.Framework;
using Vmm.Core.Posix;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Backend;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Protocol;
using static Vmm.VhostUser.Tests.Backend.ScriptedFrontend;

namespace Vmm.VhostUser.Tests.Backend;

/// <summary>SET_DEVICE_STATE_FD and CHECK_DEVICE_STATE (vhost-user.rst, "Migrating back-end state") in our back-end and front-end.</summary>
[TestFixture]
public sealed class DeviceStateTests
{
    private const ulong Base = VirtioFeatures.VERSION_1 | VhostUserVirtioFeatures.PROTOCOL_FEATURES;

    [Test]
    public async Task The_writeback_flag_moves_from_one_backend_to_another()
    {
        await using var source = new BackendFixture();
        await using var destination = new BackendFixture();
        source.Device.RestoreState([0]);
        Assert.That(destination.Device.SaveState(), Is.EqualTo(new byte[] { 1 }), "a new device starts in writeback mode");

        byte[] state;
        using (VhostUserFrontendConnection a = await VhostUserFrontendConnection.ConnectAsync(source.SocketPath))
        {
            VhostUserBackendInfo info = await a.HandshakeAsync();
            Assert.That(info.ProtocolFeatures & VhostUserProtocolFeatures.DEVICE_STATE, Is.Not.Zero, "offered and acked");
            state = await a.SaveDeviceStateAsync();
        }

        Assert.That(DeviceStateFrame.Decode(state, (ushort)VirtioDeviceId.Block).ToArray(), Is.EqualTo(new byte[] { 0 }));

        using (VhostUserFrontendConnection b = await VhostUserFrontendConnection.ConnectAsync(destination.SocketPath))
        {
            await b.HandshakeAsync();
            await b.LoadDeviceStateAsync(state);
        }

        Assert.That(destination.Device.SaveState(), Is.EqualTo(new byte[] { 0 }), "writethrough arrived");
    }

    [Test]
    public async Task SET_DEVICE_STATE_FD_is_refused_while_a_ring_runs_and_accepted_once_it_is_stopped()
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        await frontend.HandshakeAsync();
        Assert.That(await frontend.SetMemTableAsync(), Is.Zero);
        Assert.That(await frontend.AckAsync(VhostUserRequest.SET_FEATURES, U64(Base)), Is.Zero);
        BlkQueue queue = await frontend.StartQueueAsync(0, 32, Base);
        Assert.That(queue.Read(0, new byte[512]), Is.Zero, "the ring runs");

        ulong refused = await SetDeviceStateFdAsync(frontend, VhostUserTransferDirection.SAVE);
        Assert.That(refused & 0xFF, Is.Not.Zero, "error while a ring runs");
        Assert.That(refused & VhostUserDeviceStateTransfer.ReplyInvalidFdFlag, Is.Not.Zero, "no fd with an error");
        Assert.That(await frontend.GetU64Async(VhostUserRequest.CHECK_DEVICE_STATE), Is.Not.Zero, "nothing to check after a refusal");

        await frontend.GetVringBaseAsync(0);
        (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
        using (read)
        {
            ulong accepted = await SetDeviceStateFdAsync(frontend, VhostUserTransferDirection.SAVE, write);
            Assert.That(accepted, Is.EqualTo(VhostUserDeviceStateTransfer.ReplyInvalidFdFlag), "success, our channel is used");
            byte[] frame = await Task.Run(() => Pipe.ReadToEnd(read, 1 << 20));
            Assert.That(DeviceStateFrame.Decode(frame, (ushort)VirtioDeviceId.Block).ToArray(), Is.EqualTo(new byte[] { 1 }));
        }

        Assert.That(await frontend.GetU64Async(VhostUserRequest.CHECK_DEVICE_STATE), Is.Zero);
        frontend.Dispose();
        await backend.AssertServesWellBehavedFrontendAsync();
    }

    [Test]
    public async Task CHECK_DEVICE_STATE_reports_a_failed_load_and_the_device_keeps_its_state()
    {
        await using var backend = new BackendFixture();
        backend.Device.RestoreState([0]);
        using VhostUserFrontendConnection frontend = await VhostUserFrontendConnection.ConnectAsync(backend.SocketPath);
        await frontend.HandshakeAsync();

        byte[] truncated = DeviceStateFrame.Encode((ushort)VirtioDeviceId.Block, [1])[..^1];
        var e = await Assert.ThrowsAsync<VhostUserRequestFailedException>(async () => await frontend.LoadDeviceStateAsync(truncated));
        Assert.That(e!.Request, Is.EqualTo(VhostUserRequest.CHECK_DEVICE_STATE));
        Assert.That(e.Status, Is.Not.Zero);

        byte[] foreign = DeviceStateFrame.Encode((ushort)VirtioDeviceId.Entropy, [1]);
        await Assert.ThrowsAsync<VhostUserRequestFailedException>(async () => await frontend.LoadDeviceStateAsync(foreign));
        Assert.That(backend.Device.SaveState(), Is.EqualTo(new byte[] { 0 }), "a failed load changes nothing");

        // The connection lives on and a good load then succeeds.
        await frontend.LoadDeviceStateAsync(DeviceStateFrame.Encode((ushort)VirtioDeviceId.Block, [1]));
        Assert.That(backend.Device.SaveState(), Is.EqualTo(new byte[] { 1 }));
    }

    [Test]
    public async Task Without_DEVICE_STATE_negotiated_the_request_fails_in_its_reply()
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        await frontend.HandshakeAsync(VhostUserProtocolFeatures.REPLY_ACK);
        ulong reply = await SetDeviceStateFdAsync(frontend, VhostUserTransferDirection.LOAD);
        Assert.That(reply & 0xFF, Is.Not.Zero);
        frontend.Dispose();
        await backend.AssertServesWellBehavedFrontendAsync();
    }

    [TestCase(0, "shorter than")]
    [TestCase(1, "magic")]
    [TestCase(2, "version")]
    [TestCase(3, "device id")]
    [TestCase(4, "announces")]
    public void A_bad_frame_is_rejected_with_one_sentence(int corruption, string expected)
    {
        byte[] frame = DeviceStateFrame.Encode((ushort)VirtioDeviceId.Block, [1, 2, 3]);
        switch (corruption)
        {
            case 0: frame = frame[..10]; break;
            case 1: frame[0] ^= 0xFF; break;
            case 2: frame[4] = 9; break;
            case 3: frame[6] = 4; break;
            case 4: frame = frame[..^1]; break;
        }

        var e = Assert.Throws<InvalidDataException>(() => DeviceStateFrame.Decode(frame, (ushort)VirtioDeviceId.Block).ToArray());
        Assert.That(e!.Message, Does.Contain(expected));
    }

    private static async Task<ulong> SetDeviceStateFdAsync(ScriptedFrontend frontend, VhostUserTransferDirection direction, SafeFileDescriptor? end = null)
    {
        SafeFileDescriptor? other = null;
        if (end is null)
        {
            (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
            end = direction == VhostUserTransferDirection.SAVE ? write : read;
            other = direction == VhostUserTransferDirection.SAVE ? read : write;
        }

        using (other)
        using (end)
        {
            byte[] payload = new byte[VhostUserDeviceStateTransfer.Size];
            new VhostUserDeviceStateTransfer(direction, VhostUserMigrationPhase.STOPPED).Write(payload);
            await frontend.SendAsync(VhostUserRequest.SET_DEVICE_STATE_FD, payload, [end]);
        }

        using VhostUserMessage reply = await frontend.ReceiveAsync();
        VhostUserCodec.ValidateReplyHeader(reply.Header, VhostUserRequest.SET_DEVICE_STATE_FD);
        return VhostUserCodec.ReadU64(reply.Payload.Span);
    }
}
