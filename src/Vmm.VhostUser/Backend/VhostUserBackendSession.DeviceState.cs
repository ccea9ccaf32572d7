using Vmm.Core.Posix;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Backend;

/// <summary>
/// SET_DEVICE_STATE_FD and CHECK_DEVICE_STATE (vhost-user.rst, "Migrating back-end state"): the
/// wrapped device's <see cref="Vmm.Virtio.IVirtioDevice.SaveState"/> bytes, framed by
/// <see cref="DeviceStateFrame"/>, move through the pipe the front-end sends. The back-end
/// always uses the front-end's channel (reply bit 8 set). Both directions run on a pool thread
/// so a state bigger than the pipe's buffer cannot block the session; CHECK_DEVICE_STATE waits
/// for that transfer and, for a load, restores the device on the session's thread.
/// </summary>
public sealed partial class VhostUserBackendSession
{
    /// <summary>How long CHECK_DEVICE_STATE waits for the transfer to end (the front-end closes its end first).</summary>
    private static readonly TimeSpan s_transferTimeout = TimeSpan.FromSeconds(10);

    private Task<byte[]?>? _stateTransfer;
    private VhostUserTransferDirection _stateDirection;

    /// <summary>Reply error codes of SET_DEVICE_STATE_FD and CHECK_DEVICE_STATE (any non-zero value is failure).</summary>
    private enum DeviceStateError : byte
    {
        None = 0,
        NotNegotiated = 1,
        InvalidParameters = 2,
        RingsRunning = 3,
        NoTransfer = 4,
        TransferFailed = 5,
    }

    private Reply SetDeviceStateFd(VhostUserMessage message)
    {
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
        else if (Array.Exists(_vrings, v => v.Running))
        {
            // Only a suspended device (all rings stopped) may move its state (vhost-user.rst,
            // "Migrating back-end state": the STOPPED phase).
            error = DeviceStateError.RingsRunning;
        }

        if (error != DeviceStateError.None)
        {
            fd.Dispose();
            _stateTransfer = null;
            Log.RequestRejected(_logger, nameof(VhostUserRequest.SET_DEVICE_STATE_FD), error.ToString());
            return ReplyU64(VhostUserDeviceStateTransfer.EncodeReply((byte)error, returnsFd: false));
        }

        _stateDirection = parameters.TransferDirection;
        if (parameters.TransferDirection == VhostUserTransferDirection.SAVE)
        {
            byte[] frame = DeviceStateFrame.Encode((ushort)_device.DeviceId, _device.SaveState());
            _stateTransfer = Task.Run(() =>
            {
                using (fd)
                {
                    Pipe.WriteAll(fd, frame);
                }

                return (byte[]?)null;
            });
        }
        else
        {
            _stateTransfer = Task.Run(() =>
            {
                using (fd)
                {
                    return (byte[]?)Pipe.ReadToEnd(fd, DeviceStateFrame.HeaderSize + DeviceStateFrame.MaxStateSize);
                }
            });
        }

        return ReplyU64(VhostUserDeviceStateTransfer.EncodeReply(0, returnsFd: false));
    }

    private Reply CheckDeviceState()
    {
        Task<byte[]?>? transfer = _stateTransfer;
        _stateTransfer = null;
        if (!Has(VhostUserProtocolFeatures.DEVICE_STATE) || transfer is null)
        {
            Log.RequestRejected(_logger, nameof(VhostUserRequest.CHECK_DEVICE_STATE), "no transfer to check");
            return ReplyU64((ulong)DeviceStateError.NoTransfer);
        }

        try
        {
            // Bounded: the front-end has closed its end before it asks (spec), so the transfer ends.
            if (!transfer.Wait(s_transferTimeout))
            {
                throw new TimeoutException($"the state transfer did not end within {s_transferTimeout.TotalSeconds:0} s");
            }

            if (_stateDirection == VhostUserTransferDirection.LOAD)
            {
                if (Array.Exists(_vrings, v => v.Running))
                {
                    throw new InvalidOperationException("a ring started before the loaded state was checked");
                }

                byte[] frame = transfer.Result!;
                _device.RestoreState(DeviceStateFrame.Decode(frame, (ushort)_device.DeviceId));
            }

            return ReplyU64((ulong)DeviceStateError.None);
        }
        catch (Exception e) when (e is AggregateException or InvalidDataException or TimeoutException or InvalidOperationException or ArgumentException or IOException)
        {
            Log.RequestRejected(_logger, nameof(VhostUserRequest.CHECK_DEVICE_STATE), (e as AggregateException)?.InnerException?.Message ?? e.Message);
            return ReplyU64((ulong)DeviceStateError.TransferFailed);
        }
    }
}
