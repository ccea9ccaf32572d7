using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Frontend;

public sealed partial class VhostUserDeviceActor
{
    private void DeviceStateCommands()
    {
        Receive<SaveDeviceState>(HandleSaveDeviceState);
        Receive<LoadDeviceState>(HandleLoadDeviceState);
    }

    /// <summary>
    /// SAVE over SET_DEVICE_STATE_FD when DEVICE_STATE was negotiated, else empty bytes. The
    /// back-end refuses while a ring runs, so the VMM stops every queue first (vhost-user.rst,
    /// "Migrating back-end state": the STOPPED phase).
    /// </summary>
    private void HandleSaveDeviceState(SaveDeviceState message)
    {
        VhostUserFrontendConnection connection = _connection!;
        RunCommand(async ct => connection.HasProtocolFeature(VhostUserProtocolFeatures.DEVICE_STATE)
            ? new DeviceStateSaved(await connection.SaveDeviceStateAsync(ct).ConfigureAwait(false))
            : new DeviceStateSaved([]));
    }

    /// <summary>LOAD over SET_DEVICE_STATE_FD; empty bytes load nothing. Without DEVICE_STATE a non-empty state is an error.</summary>
    private void HandleLoadDeviceState(LoadDeviceState message)
    {
        VhostUserFrontendConnection connection = _connection!;
        RunCommand(async ct =>
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
