using Vmm.Core.Posix;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Frontend;

public sealed partial class VhostUserFrontendConnection
{
    /// <summary>The most device state a front-end accepts from a back-end (16 MiB); checked while reading.</summary>
    public const int MaxDeviceStateSize = 16 << 20;

    /// <summary>
    /// The deadline of one device-state transfer over its pipe (the back-end's own limit for
    /// the other direction is the same): a back-end that keeps its end open without writing or
    /// reading cannot hold the device for longer.
    /// </summary>
    public static readonly TimeSpan DeviceStateTimeout = TimeSpan.FromSeconds(10);

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
            using CancellationTokenSource transfer = LinkLifetime(cancellationToken);
            byte[] state = await TransferAsync(() => Pipe.ReadToEnd(source, MaxDeviceStateSize, DeviceStateTimeout, transfer.Token), cancellationToken)
                .ConfigureAwait(false);
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
            using CancellationTokenSource transfer = LinkLifetime(cancellationToken);
            await TransferAsync(() =>
            {
                Pipe.WriteAll(sink, state.Span, DeviceStateTimeout, transfer.Token);
                return true;
            }, cancellationToken).ConfigureAwait(false);

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

            if (!hasFd)
            {
                return null;
            }

            // The back-end's own channel must be a pipe or a socket (spec, SET_DEVICE_STATE_FD):
            // anything else (a file, a device) could be read for ever or written without end.
            SafeFileDescriptor theirs = reply.TakeFd(0);
            FileKind kind = FileDescriptors.GetKind(theirs);
            if (kind is not (FileKind.Pipe or FileKind.Socket))
            {
                theirs.Dispose();
                throw new VhostUserProtocolException($"SET_DEVICE_STATE_FD reply carries {kind} as the transfer channel, not a pipe or a socket.");
            }

            return theirs;
        }
    }

    /// <summary>
    /// Runs a blocking pipe transfer (its own deadline, <see cref="DeviceStateTimeout"/>) off the
    /// caller's thread; its failures become the back-end's: a transfer that stalls, overflows
    /// <see cref="MaxDeviceStateSize"/> or breaks off.
    /// </summary>
    private static async Task<T> TransferAsync<T>(Func<T> transfer, CancellationToken cancellationToken)
    {
        try
        {
            return await Task.Run(transfer, CancellationToken.None).ConfigureAwait(false);
        }
        catch (TimeoutException e)
        {
            throw new VhostUserProtocolException($"The back-end did not finish the device state transfer within {DeviceStateTimeout.TotalSeconds:0} s.", e);
        }
        catch (InvalidDataException e)
        {
            throw new VhostUserProtocolException($"The back-end's device state is larger than {MaxDeviceStateSize} bytes.", e);
        }
        catch (PosixException e)
        {
            throw new VhostUserProtocolException($"The device state transfer broke off: {e.Message}", e);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new VhostUserConnectionLostException("The connection ended during the device state transfer.");
        }
    }
}
