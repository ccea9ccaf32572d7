using NUnit.Framework;
using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Core.Memory;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Protocol;
using Vmm.TestKit;

namespace Vmm.VhostUser.Tests.Frontend;

/// <summary>
/// The guest driver's status reaches the back-end with SET_STATUS when STATUS was negotiated
/// (vhost-user.rst, VHOST_USER_SET_STATUS): as it changes, 0 when the device is reset, and the
/// current one at the end of a replay.
/// </summary>
[TestFixture]
public sealed class DriverStatusTests : AkkaTest
{
    private const VhostUserProtocolFeatures WithStatus =
        VhostUserProtocolFeatures.REPLY_ACK | VhostUserProtocolFeatures.CONFIG | VhostUserProtocolFeatures.STATUS;

    private static readonly byte[] s_config = [.. Enumerable.Range(1, 60).Select(i => (byte)i)];

    [Test]
    public async Task Device_must_send_SET_STATUS_as_the_guests_status_changes_and_0_on_reset()
    {
        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options());
        using ScriptedBackend backend = await backends.NextAsync();
        await backend.ServeHandshakeAsync(protocolFeatures: WithStatus, config: s_config);
        using VhostUserDevice device = await connect;

        Task first = Task.Run(() =>
        {
            device.DriverStatusChanged(VirtioDeviceStatus.ACKNOWLEDGE);
            device.DriverStatusChanged(VirtioDeviceStatus.ACKNOWLEDGE);
            device.DriverStatusChanged(VirtioDeviceStatus.ACKNOWLEDGE | VirtioDeviceStatus.DRIVER);
        });
        Assert.That(await ExpectStatusAsync(backend), Is.EqualTo(1UL));
        Assert.That(await ExpectStatusAsync(backend), Is.EqualTo(3UL), "an unchanged status is not sent again");
        await first;

        Task reset = Task.Run(device.Reset);
        Assert.That(await ExpectStatusAsync(backend), Is.EqualTo(0UL), "the reset tells the back-end status 0");
        await reset;
    }

    [Test]
    public async Task Device_must_keep_the_status_to_itself_without_STATUS()
    {
        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options());
        using ScriptedBackend backend = await backends.NextAsync();
        await backend.ServeHandshakeAsync(protocolFeatures: WithStatus & ~VhostUserProtocolFeatures.STATUS, config: s_config);
        using VhostUserDevice device = await connect;

        Task write = Task.Run(() =>
        {
            device.DriverStatusChanged(VirtioDeviceStatus.ACKNOWLEDGE);
            device.WriteConfig(0, [1]);
        });

        // The next request on the wire is the config write: no SET_STATUS went before it.
        await backend.ExpectAndDropAsync(VhostUserRequest.SET_CONFIG);
        await write;
    }

    [Test]
    public async Task Device_must_replay_the_guests_status_last()
    {
        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options());
        ScriptedBackend first = await backends.NextAsync();
        await first.ServeHandshakeAsync(protocolFeatures: WithStatus, config: s_config);
        using VhostUserDevice device = await connect;
        using GuestMemory memory = GuestMemory.Create(1 << 20);
        using var kick = new EventFd();
        var resources = new VirtqueueResources(new VirtqueueParams(64, 0x1000, 0x2000, 0x3000), memory, kick, new FunctionBackedInterruptLine(0, _ => { }));
        Task start = Task.Run(() => device.StartQueue(0, resources, ScriptedBackend.DefaultFeatures));
        foreach (VhostUserRequest r in ScriptedBackend.RingStart)
        {
            await first.ExpectAndDropAsync(r);
        }

        await start;
        Task ok = Task.Run(() => device.DriverStatusChanged((VirtioDeviceStatus)0xf));
        Assert.That(await ExpectStatusAsync(first), Is.EqualTo(0xfUL));
        await ok;

        first.Dispose();
        using ScriptedBackend second = await backends.NextAsync();
        await second.ServeHandshakeAsync(protocolFeatures: WithStatus, config: s_config);
        foreach (VhostUserRequest r in ScriptedBackend.RingStart)
        {
            await second.ExpectAndDropAsync(r);
        }

        Assert.That(await ExpectStatusAsync(second), Is.EqualTo(0xfUL), "after the rings, the driver's status (DRIVER_OK included)");
    }

    private static async Task<ulong> ExpectStatusAsync(ScriptedBackend backend)
    {
        using VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_STATUS);
        return VhostUserCodec.ReadU64(m.Payload.Span);
    }
}
