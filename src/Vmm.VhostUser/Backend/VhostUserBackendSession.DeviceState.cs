using Vmm.Core.Posix;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Backend;

/// <summary>
/// SET_DEVICE_STATE_FD and CHECK_DEVICE_STATE (vhost-user.rst, "Migrating back-end state"): the
/// wrapped device's <see cref="Vmm.Virtio.IVirtioDevice.SaveState"/> bytes, framed by
/// <see cref="DeviceStateFrame"/>, move through the pipe the front-end sends. The back-end
/// always uses the front-end's channel (reply bit 8 set). The transfer runs on a thread of its
/// own (<see cref="DeviceStateTransfer"/>), with a size limit and a deadline; a new request
/// replaces (cancels) the one before, and the session's end cancels it, so a front-end that
/// floods requests or never closes its end costs one thread for a bounded time.
/// CHECK_DEVICE_STATE waits for the transfer and, for a load, restores the device on the
/// session's thread.
/// </summary>
public sealed partial class VhostUserBackendSession
{
    private DeviceStateTransfer? _stateTransfer;

    /// <summary>Reply error codes of SET_DEVICE_STATE_FD and CHECK_DEVICE_STATE (any non-zero value is failure).</summary>
    private enum DeviceStateError : byte
    {
        None = 0,
        NotNegotiated = 1,
        InvalidParameters = 2,
        RingsRunning = 3,
        NoTransfer = 4,
        TransferFailed = 5,
        NotAPipe = 6,
    }

    private Reply SetDeviceStateFd(VhostUserMessage message)
    {
        // Whatever comes next, the previous transfer is over: a front-end starts a new one only
        // after it gave up on the old (or it is flooding).
        EndDeviceStateTransfer();
        SafeFileDescriptor fd = message.TakeFd(0);
        var parameters = VhostUserDeviceStateTransfer.Read(message.Payload.Span);
        DeviceStateError error = DeviceStateError.None;
        if (!Has(VhostUserProtocolFeatures.DEVICE_STATE))
        {
            error = DeviceStateError.NotNegotiated;
        }
        else if (!parameters.IsValid)
        {
            error = DeviceStateError.InvalidParameters;
        }
        else if (AnyRingRunning)
        {
            // Only a suspended device (all rings stopped) may move its state (vhost-user.rst,
            // "Migrating back-end state": the STOPPED phase).
            error = DeviceStateError.RingsRunning;
        }
        else if (KindOf(fd) is not (FileKind.Pipe or FileKind.Socket))
        {
            // The spec's channel is a pipe (a socket behaves alike); a file or a device (/dev/zero
            // reads for ever, /dev/full fails every write) is not a state channel.
            error = DeviceStateError.NotAPipe;
        }

        byte[]? frame = null;
        if (error == DeviceStateError.None && parameters.TransferDirection == VhostUserTransferDirection.SAVE)
        {
            try
            {
                frame = DeviceStateFrame.Encode((ushort)_device.DeviceId, _device.SaveState());
            }
            catch (Exception e)
            {
                // The device's state cannot be had (or exceeds the frame's limit): this request fails.
                Log.RequestRejected(_logger, nameof(VhostUserRequest.SET_DEVICE_STATE_FD), e.Message);
                error = DeviceStateError.TransferFailed;
            }
        }

        if (error != DeviceStateError.None)
        {
            fd.Dispose();
            Log.RequestRejected(_logger, nameof(VhostUserRequest.SET_DEVICE_STATE_FD), error.ToString());
            return ReplyU64(VhostUserDeviceStateTransfer.EncodeReply((byte)error, returnsFd: false));
        }

        _stateTransfer = frame is not null
            ? DeviceStateTransfer.StartSave(fd, frame, _options.DeviceStateTimeout, _end.Token)
            : DeviceStateTransfer.StartLoad(fd, _options.DeviceStateTimeout, _end.Token);
        return ReplyU64(VhostUserDeviceStateTransfer.EncodeReply(0, returnsFd: false));
    }

    private Reply CheckDeviceState()
    {
        DeviceStateTransfer? transfer = _stateTransfer;
        _stateTransfer = null;
        if (!Has(VhostUserProtocolFeatures.DEVICE_STATE) || transfer is null)
        {
            transfer?.Dispose();
            Log.RequestRejected(_logger, nameof(VhostUserRequest.CHECK_DEVICE_STATE), "no transfer to check");
            return ReplyU64((ulong)DeviceStateError.NoTransfer);
        }

        using (transfer)
        {
            try
            {
                byte[] frame = transfer.Result();
                if (transfer.Direction == VhostUserTransferDirection.LOAD)
                {
                    if (AnyRingRunning)
                    {
                        throw new InvalidOperationException("a ring started before the loaded state was checked");
                    }

                    _device.RestoreState(DeviceStateFrame.Decode(frame, (ushort)_device.DeviceId));
                }

                return ReplyU64((ulong)DeviceStateError.None);
            }
            catch (Exception e)
            {
                // Whatever the transfer or the device's restore failed with is this request's failure.
                Log.RequestRejected(_logger, nameof(VhostUserRequest.CHECK_DEVICE_STATE), e.Message);
                return ReplyU64((ulong)DeviceStateError.TransferFailed);
            }
        }
    }

    private static FileKind KindOf(SafeFileDescriptor fd)
    {
        try
        {
            return FileDescriptors.GetKind(fd);
        }
        catch (PosixException)
        {
            return FileKind.Other;
        }
    }

    private void EndDeviceStateTransfer()
    {
        _stateTransfer?.Dispose();
        _stateTransfer = null;
    }
}
