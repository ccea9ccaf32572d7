namespace Vmm.Core.Posix.Storage;

/// <summary>The ways an <see cref="IIoEngine"/> carries operations out.</summary>
public enum IoEngineKind
{
    /// <summary>On the calling thread, before <see cref="IIoEngine.Start"/> returns.</summary>
    Inline,

    /// <summary>On a pool of threads that block in the system calls.</summary>
    Threads,

    /// <summary>Submitted to the kernel through an io_uring and completed as the device finishes them.</summary>
    IoUring,
}

/// <summary>
/// Carries out disk operations for one queue worker. Used by one thread at a time (the worker):
/// it starts operations, submits them, waits and reaps, in any order of completion.
/// </summary>
/// <remarks>
/// The protocol, per batch: <see cref="Start"/> each operation (an inline engine finishes it
/// there and says so); <see cref="Submit"/> once; later <see cref="Reap"/> what finished,
/// waiting first (poll on <see cref="CompletionHandle"/>, or <see cref="WaitForCompletion"/>)
/// when nothing has. <see cref="IDisposable.Dispose"/> waits for every operation in flight, since they point
/// into memory the caller is about to release.
/// </remarks>
public interface IIoEngine : IDisposable
{
    IoEngineKind Kind { get; }

    /// <summary>Operations started and not yet reaped.</summary>
    int InFlight { get; }

    /// <summary>
    /// A descriptor that polls readable while finished operations wait to be reaped; null for an
    /// engine that never leaves one in flight.
    /// </summary>
    SafeFileDescriptor? CompletionHandle { get; }

    /// <summary>
    /// Starts <paramref name="request"/>. True when it already finished, with
    /// <paramref name="result"/> (bytes or <c>-errno</c>); false when its completion comes
    /// through <see cref="Reap"/>.
    /// </summary>
    bool Start(in IoRequest request, out int result);

    /// <summary>Hands the operations started since the last call to the kernel or the pool.</summary>
    void Submit();

    /// <summary>Copies finished operations into <paramref name="completions"/>; returns how many (0 when none is ready).</summary>
    int Reap(Span<IoCompletion> completions);

    /// <summary>Blocks until at least one operation can be reaped; returns at once when none is in flight.</summary>
    void WaitForCompletion();
}
