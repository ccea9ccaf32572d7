using NUnit.Framework;
using Vmm.Core.Machine;
using Vmm.TestKit;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Tests.Frontend;

/// <summary>
/// What a device tells its host about its connection: <see cref="DeviceConnectionLost"/> and
/// <see cref="DeviceConnectionRestored"/> on the event stream (<c>vmm run</c> logs them), and
/// <see cref="VhostUserDevice.Stopped"/> once it gave up.
/// </summary>
[TestFixture]
public sealed class DeviceConnectionEventsTests : AkkaTest
{
    private static readonly byte[] s_config = [.. Enumerable.Range(1, 60).Select(i => (byte)i)];

    [Test]
    public async Task Loss_and_recovery_are_published_on_the_event_stream()
    {
        var events = CreateTestProbe();
        Sys.EventStream.Subscribe(events.Ref, typeof(DeviceConnectionLost));
        Sys.EventStream.Subscribe(events.Ref, typeof(DeviceConnectionRestored));
        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options() with { Name = "blk7" });
        ScriptedBackend first = await backends.NextAsync();
        await first.ServeHandshakeAsync(protocolFeatures: VhostUserProtocolFeatures.REPLY_ACK | VhostUserProtocolFeatures.CONFIG, config: s_config);
        using VhostUserDevice device = await connect;

        first.Dispose();
        DeviceConnectionLost lost = await events.ExpectMsgAsync<DeviceConnectionLost>(TimeSpan.FromSeconds(10));
        Assert.That((lost.Name, lost.Attempt), Is.EqualTo(("blk7", 1)));
        Assert.That(lost.Reason, Is.Not.Empty);

        using ScriptedBackend second = await backends.NextAsync();
        await second.ServeHandshakeAsync(protocolFeatures: VhostUserProtocolFeatures.REPLY_ACK | VhostUserProtocolFeatures.CONFIG, config: s_config);
        DeviceConnectionRestored restored = await events.ExpectMsgAsync<DeviceConnectionRestored>(TimeSpan.FromSeconds(10));
        Assert.That((restored.Name, restored.Attempts), Is.EqualTo(("blk7", 1)));
        Assert.That(device.Stopped.IsCompleted, Is.False);
    }

    [Test]
    public async Task A_device_that_gave_up_fails_calls_with_connection_lost_instead_of_a_timeout()
    {
        var failures = CreateTestProbe();
        Sys.EventStream.Subscribe(failures.Ref, typeof(DeviceFailed));
        var backends = new BackendFactory();
        Task<VhostUserDevice> connect = VhostUserDevice.ConnectAsync(Sys, backends.Options() with { Reconnect = false });
        ScriptedBackend backend = await backends.NextAsync();
        await backend.ServeHandshakeAsync(protocolFeatures: VhostUserProtocolFeatures.REPLY_ACK | VhostUserProtocolFeatures.CONFIG, config: s_config);
        using VhostUserDevice device = await connect;

        backend.Dispose();
        await failures.ExpectMsgAsync<DeviceFailed>(TimeSpan.FromSeconds(10));
        await device.Stopped.WaitAsync(TimeSpan.FromSeconds(10));

        // Without Stopped this would be an AskTimeoutException after CommandTimeout.
        Assert.That(() => device.Reset(), Throws.TypeOf<VhostUserConnectionLostException>());
    }
}
