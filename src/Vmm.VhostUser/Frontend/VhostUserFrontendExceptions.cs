using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Frontend;

/// <summary>
/// The back-end answered a request with a non-zero REPLY_ACK status (vhost-user.rst,
/// "VHOST_USER_PROTOCOL_F_REPLY_ACK"): it refused the request but the connection is intact.
/// </summary>
public sealed class VhostUserRequestFailedException : Exception
{
    public VhostUserRequestFailedException(VhostUserRequest request, ulong status)
        : base($"The vhost-user back-end rejected {request} (status {status}).")
    {
        Request = request;
        Status = status;
    }

    public VhostUserRequest Request { get; }

    public ulong Status { get; }
}

/// <summary>
/// The back-end cannot drive a virtio 1.x device for us (no VERSION_1, too many memory
/// regions for what it negotiated, ...). Reconnecting would meet the same back-end, so
/// supervisors treat it like a protocol violation: the device stops.
/// </summary>
public sealed class VhostUserIncompatibleBackendException : Exception
{
    public VhostUserIncompatibleBackendException(string message) : base(message)
    {
    }
}

/// <summary>Why <see cref="VhostUserDevice.ConnectAsync(Akka.Actor.IActorRefFactory, VhostUserDeviceOptions, CancellationToken)"/> failed.</summary>
public enum VhostUserConnectFailure
{
    SocketMissing,
    ConnectionRefused,
    HungUpDuringHandshake,
    HandshakeTimeout,
    Other,
}

/// <summary>
/// A vhost-user device could not be brought up: its message is one sentence a command line
/// can print as it is.
/// </summary>
public sealed class VhostUserConnectException : IOException
{
    public VhostUserConnectException(VhostUserConnectFailure failure, string message, Exception? inner = null)
        : base(message, inner)
    {
        Failure = failure;
    }

    public VhostUserConnectFailure Failure { get; }
}
