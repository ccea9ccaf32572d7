namespace Vmm.Core.Events;

public sealed partial class EventFd
{
    /// <summary>
    /// For <see cref="EventNotifierLoop"/>, which has found <paramref name="fd"/> readable: reads
    /// (and so resets) the counter. False when it was empty after all (EAGAIN on a file a peer
    /// made non-blocking).
    /// </summary>
    internal static bool TryReadReadyCounter(int fd, out ulong value) => TryReadCounter(fd, out value);
}
