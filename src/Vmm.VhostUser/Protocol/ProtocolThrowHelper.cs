using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;

namespace Vmm.VhostUser.Protocol;

/// <summary>
/// Throwers for the protocol layer. Kept out of line so the validators stay small enough to inline
/// on the receive path (the pattern of System.IO.Pipelines' ThrowHelper).
/// </summary>
internal static class ProtocolThrowHelper
{
    [DoesNotReturn]
    public static void ThrowProtocol(string message) => throw CreateProtocol(message);

    [DoesNotReturn]
    public static T ThrowProtocol<T>(string message) => throw CreateProtocol(message);

    [DoesNotReturn]
    public static void ThrowPayloadTooShort(string what, int expected, int actual) =>
        throw CreateProtocol($"{what} payload needs {expected} bytes, got {actual}");

    [DoesNotReturn]
    public static void ThrowDestinationTooShort(int needed, int actual) =>
        throw new ArgumentException($"Destination span holds {actual} bytes; {needed} are needed.", "destination");

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static VhostUserProtocolException CreateProtocol(string message) => new(message);
}
