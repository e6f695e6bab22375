using ResLora.Training.Distributed;

namespace ResLora.Cli;

/// <summary>
/// How a verb runs under an MPI launcher (<c>mpirun -np N reslora train ...</c>): it joins the job when the launcher's
/// environment says so, and makes sure the job ends as one. A stop the ranks agreed on (<see cref="AgreedStopException"/>)
/// ends every rank normally with rank 0's message; a failure on one rank, which the others waiting in the next
/// collective cannot see, is reported by that rank and ends the whole job through MPI_Abort within seconds.
/// </summary>
internal static class DistributedLaunch
{
    public static int Run(Func<ICommunicator?, int> body)
    {
        var comm = MpiCommunicator.FromEnvironment();
        if (comm is null) return body(null);
        try
        {
            int rc = body(comm);
            comm.Dispose();
            return rc;
        }
        catch (AgreedStopException e)
        {
            comm.Dispose();
            return comm.Rank == 0 ? CliErrors.Report(e) : CliErrors.UserErrorExit;
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"rank {comm.Rank} of {comm.Size} failed; ending the MPI job:");
            int code = CliErrors.Report(e);
            comm.Abort(code);
            return code;
        }
    }
}
