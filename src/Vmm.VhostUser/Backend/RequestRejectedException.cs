namespace Vmm.VhostUser.Backend;

/// <summary>
/// A well-formed request the back-end cannot carry out (a ring index out of range, a region that
/// overlaps another, a feature not offered). Answered with a non-zero REPLY_ACK when a reply is
/// expected; the connection stays up.
/// </summary>
internal sealed class RequestRejectedException : Exception
{
    public RequestRejectedException(string message) : base(message)
    {
    }

    public RequestRejectedException(string message, Exception inner) : base(message, inner)
    {
    }
}
