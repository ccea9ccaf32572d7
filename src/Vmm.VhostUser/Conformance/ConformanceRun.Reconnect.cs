namespace Vmm.VhostUser.Conformance;

// The last check: a front-end that reconnects (after its own restart, or QEMU's reconnect=N)
// meets the back-end again on the same socket.
internal sealed partial class ConformanceRun
{
    private async Task<Verdict> CheckSecondConnectionAsync(CancellationToken cancellationToken)
    {
        // An earlier check already tried a new connection after the back-end closed one: that
        // was this check's question, answered (waiting again would only cost another timeout).
        if (_reconnectFailure is Exception earlier)
        {
            return earlier is IOException
                ? OneShot(earlier)
                : Verdict.Fail($"after the connection ended in {_lostIn}, a new one was accepted but failed: {Describe(earlier)}");
        }

        try
        {
            await ReconnectAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (IOException e)
        {
            return OneShot(e);
        }

        await HandshakeAsync(cancellationToken).ConfigureAwait(false);
        if (!Probe.HasRequests)
        {
            await StartRingsAsync(cancellationToken).ConfigureAwait(false);
            return Verdict.Pass("after the first connection closed, a second one was accepted: handshake and ring set-up completed");
        }

        await StartRingsAsync(cancellationToken).ConfigureAwait(false);
        string? error = await ProbeOnceAsync(null, cancellationToken).ConfigureAwait(false);
        return error is null
            ? Verdict.Pass("after the first connection closed, a second one was accepted: handshake, ring set-up and a request completed")
            : Verdict.Fail($"a second connection was accepted and set up, then {error}");
    }

    private Verdict OneShot(Exception e) => Verdict.Fail(
        $"no front-end could connect within {Timeout.TotalSeconds:0.###} s after the first connection closed ({e.Message}): " +
        "a back-end that serves one front-end and exits cannot serve a reconnecting one");
}
