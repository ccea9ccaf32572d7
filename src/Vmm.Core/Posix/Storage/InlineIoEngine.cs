namespace Vmm.Core.Posix.Storage;

/// <summary>
/// Runs each operation on the caller's thread inside <see cref="Start"/>: one request at a time
/// per queue. The fastest choice when a transfer is a memory copy (an image in tmpfs), where
/// handing it to another thread or to the kernel's workers costs more than doing it.
/// </summary>
public sealed class InlineIoEngine(DiskFile disk) : IIoEngine
{
    private readonly DiskFile _disk = disk ?? throw new ArgumentNullException(nameof(disk));

    public IoEngineKind Kind => IoEngineKind.Inline;

    public int InFlight => 0;

    public SafeFileDescriptor? CompletionHandle => null;

    public bool Start(in IoRequest request, out int result)
    {
        result = _disk.Execute(request);
        return true;
    }

    public void Submit()
    {
    }

    public int Reap(Span<IoCompletion> completions) => 0;

    public void WaitForCompletion()
    {
    }

    public void Dispose()
    {
    }
}
