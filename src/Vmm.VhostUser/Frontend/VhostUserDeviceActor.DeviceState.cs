using Akka.Actor;
using Vmm.Core.Posix;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Frontend;

public sealed partial class VhostUserDeviceActor
{
    private void DeviceStateCommands()
    {
        Receive<SaveDeviceState>(HandleSaveDeviceState);
        Receive<LoadDeviceState>(HandleLoadDeviceState);
        Receive<RestoreInflight>(HandleRestoreInflight);
    }

    /// <summary>
    /// A saved inflight region becomes this device's region: a new memfd with the saved bytes,
    /// kept in the snapshot and sent (SET_INFLIGHT_FD) before the next ring starts, in place of
    /// a GET_INFLIGHT_FD. The back-end checks its content when each ring starts.
    /// </summary>
    private void HandleRestoreInflight(RestoreInflight message)
    {
        if (message.Contents.Length == 0)
        {
            Sender.Tell(InflightRestored.Instance);
            return;
        }

        SafeFileDescriptor fd = MemFd.Create("vhost-user-inflight", (ulong)message.Contents.Length);
        try
        {
            using SharedMapping map = SharedMapping.Map(fd, 0, (ulong)message.Contents.Length);
            unsafe
            {
                message.Contents.CopyTo(new Span<byte>(map.Address, message.Contents.Length));
            }
        }
        catch
        {
            fd.Dispose();
            throw;
        }

        var region = new VhostUserInflightRegion(fd, (ulong)message.Contents.Length, 0, message.NumQueues, message.QueueSize);
        VhostUserInflightRegion? old = _snapshot.Inflight;
        UpdateSnapshot(_snapshot with { Inflight = region });
        old?.Dispose();
        _inflightSent = false;
        Sender.Tell(InflightRestored.Instance);
    }

    /// <summary>
    /// SAVE over SET_DEVICE_STATE_FD when DEVICE_STATE was negotiated, else empty bytes. The
    /// back-end refuses while a ring runs, so the VMM stops every queue first (vhost-user.rst,
    /// "Migrating back-end state": the STOPPED phase).
    /// </summary>
    private void HandleSaveDeviceState(SaveDeviceState message)
    {
        VhostUserFrontendConnection connection = _connection!;
        RunCommand(message, async ct => connection.HasProtocolFeature(VhostUserProtocolFeatures.DEVICE_STATE)
            ? new DeviceStateSaved(await connection.SaveDeviceStateAsync(ct).ConfigureAwait(false))
            : new DeviceStateSaved([]));
    }

    /// <summary>LOAD over SET_DEVICE_STATE_FD; empty bytes load nothing. Without DEVICE_STATE a non-empty state is an error.</summary>
    private void HandleLoadDeviceState(LoadDeviceState message)
    {
        VhostUserFrontendConnection connection = _connection!;
        RunCommand(message, async ct =>
        {
            if (message.State.Length == 0)
            {
                return DeviceStateLoaded.Instance;
            }

            if (!connection.HasProtocolFeature(VhostUserProtocolFeatures.DEVICE_STATE))
            {
                throw new InvalidOperationException("The saved device state cannot be loaded: the back-end does not offer DEVICE_STATE.");
            }

            await connection.LoadDeviceStateAsync(message.State, ct).ConfigureAwait(false);
            return DeviceStateLoaded.Instance;
        });
    }
}
