namespace Vmm.VhostUser.Protocol;

/// <summary>
/// The peer is gone: EOF, ECONNRESET or EPIPE, possibly in the middle of a message.
/// Supervisors restart (reconnect) on this one.
/// </summary>
public sealed class VhostUserConnectionLostException : IOException
{
    public VhostUserConnectionLostException(string message) : base(message)
    {
    }

    public VhostUserConnectionLostException(string message, Exception inner) : base(message, inner)
    {
    }
}

/// <summary>
/// The peer broke the protocol: a malformed header, a size that does not match the request,
/// unexpected or missing fds, a reply that does not answer the request. Supervisors stop
/// the device on this one rather than reconnecting into the same fault.
/// </summary>
public sealed class VhostUserProtocolException : Exception
{
    public VhostUserProtocolException(string message) : base(message)
    {
    }

    public VhostUserProtocolException(string message, Exception inner) : base(message, inner)
    {
    }
}
