using Vmm.Core.Posix;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Frontend;

public sealed partial class VhostUserFrontendConnection
{
    /// <summary>The most device state a front-end accepts from a back-end (16 MiB); checked while reading.</summary>
    public const int MaxDeviceStateSize = 16 << 20;

    /// <summary>
    /// Saves the back-end's internal state (vhost-user.rst, "Migrating back-end state", SAVE in
    /// the STOPPED phase): a pipe's write end goes with SET_DEVICE_STATE_FD, the back-end writes
    /// its state and closes it, we read to end of file, then CHECK_DEVICE_STATE must answer 0.
    /// All rings must be stopped (GET_VRING_BASE) first. Needs DEVICE_STATE. The bytes are opaque.
    /// </summary>
    public async Task<byte[]> SaveDeviceStateAsync(CancellationToken cancellationToken = default)
    {
        RequireProtocolFeature(VhostUserProtocolFeatures.DEVICE_STATE, VhostUserRequest.SET_DEVICE_STATE_FD);
        (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
        SafeFileDescriptor ours = read;
        try
        {
            SafeFileDescriptor? theirs = await SetDeviceStateFdAsync(VhostUserTransferDirection.SAVE, write, cancellationToken).ConfigureAwait(false);
            if (theirs is not null)
            {
                // The back-end chose its own channel: ours is discarded (spec, SET_DEVICE_STATE_FD).
                ours.Dispose();
                ours = theirs;
            }

            SafeFileDescriptor source = ours;
            byte[] state = await Task.Run(() => Pipe.ReadToEnd(source, MaxDeviceStateSize), cancellationToken).ConfigureAwait(false);
            await CheckDeviceStateAsync(cancellationToken).ConfigureAwait(false);
            return state;
        }
        finally
        {
            ours.Dispose();
        }
    }

    /// <summary>
    /// Loads <paramref name="state"/> (from <see cref="SaveDeviceStateAsync"/> of a compatible
    /// back-end) into the back-end: LOAD over a pipe, close, then CHECK_DEVICE_STATE must answer 0.
    /// Send it before the rings start. Needs DEVICE_STATE.
    /// </summary>
    public async Task LoadDeviceStateAsync(ReadOnlyMemory<byte> state, CancellationToken cancellationToken = default)
    {
        RequireProtocolFeature(VhostUserProtocolFeatures.DEVICE_STATE, VhostUserRequest.SET_DEVICE_STATE_FD);
        (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
        SafeFileDescriptor ours = write;
        try
        {
            SafeFileDescriptor? theirs = await SetDeviceStateFdAsync(VhostUserTransferDirection.LOAD, read, cancellationToken).ConfigureAwait(false);
            if (theirs is not null)
            {
                ours.Dispose();
                ours = theirs;
            }

            SafeFileDescriptor sink = ours;
            await Task.Run(() => Pipe.WriteAll(sink, state.Span), cancellationToken).ConfigureAwait(false);

            // Closing our end is the end of the transfer (spec); only then may we ask.
            ours.Dispose();
            await CheckDeviceStateAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            ours.Dispose();
        }
    }

    /// <summary>CHECK_DEVICE_STATE: throws <see cref="VhostUserRequestFailedException"/> unless the back-end answers 0.</summary>
    public async Task CheckDeviceStateAsync(CancellationToken cancellationToken = default)
    {
        RequireProtocolFeature(VhostUserProtocolFeatures.DEVICE_STATE, VhostUserRequest.CHECK_DEVICE_STATE);
        ulong result = await GetU64Async(VhostUserRequest.CHECK_DEVICE_STATE, cancellationToken).ConfigureAwait(false);
        if (result != 0)
        {
            throw new VhostUserRequestFailedException(VhostUserRequest.CHECK_DEVICE_STATE, result);
        }
    }

    /// <summary>
    /// SET_DEVICE_STATE_FD with <paramref name="backendEnd"/> (disposed here: the back-end owns
    /// its copy once sent). Returns the back-end's own channel when it sends one, else null;
    /// a non-zero error code throws <see cref="VhostUserRequestFailedException"/>.
    /// </summary>
    private async Task<SafeFileDescriptor?> SetDeviceStateFdAsync(
        VhostUserTransferDirection direction, SafeFileDescriptor backendEnd, CancellationToken cancellationToken)
    {
        using (backendEnd)
        {
            byte[] payload = Encode(new VhostUserDeviceStateTransfer(direction, VhostUserMigrationPhase.STOPPED), VhostUserDeviceStateTransfer.Size);
            using VhostUserReply reply = await SendAndReceiveAsync(VhostUserRequest.SET_DEVICE_STATE_FD, payload, [backendEnd], cancellationToken)
                .ConfigureAwait(false);
            (byte error, bool hasFd) = VhostUserDeviceStateTransfer.ParseReply(VhostUserCodec.ReadU64(reply.Payload));
            if (error != 0)
            {
                throw new VhostUserRequestFailedException(VhostUserRequest.SET_DEVICE_STATE_FD, error);
            }

            return hasFd ? reply.TakeFd(0) : null;
        }
    }
}
