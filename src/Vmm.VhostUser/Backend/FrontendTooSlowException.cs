namespace Vmm.VhostUser.Backend;

/// <summary>The front-end held the connection without sending what it must within a limit (<see cref="VhostUserBackendOptions"/>).</summary>
internal sealed class FrontendTooSlowException(string message) : Exception(message);
